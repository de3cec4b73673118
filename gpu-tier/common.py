"""What the GPU tier's scripts share: the skip without a GPU, agarun, the timing helpers."""
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_with_cuda():
    """torch, or None after printing why the script skips (exit status 0: a clean skip)."""
    try:
        import torch
    except ImportError:
        print("skipped (GPU tier): torch is not installed")
        return None
    if not torch.cuda.is_available():
        print("skipped (GPU tier): PyTorch sees no CUDA device")
        return None
    return torch


def assigner() -> str:
    addr = os.environ.get("ACB_ASSIGNER")
    if not addr:
        sys.exit("set ACB_ASSIGNER to a running acb-assigner (gpu-tier/run.sh starts one)")
    return addr


def agarun(*args: str) -> list:
    """The command line of agarun, from this interpreter."""
    return [sys.executable, "-m", "acb_broker.agarun", "--assigner", assigner(), *args]


def run_job(cmd: list, env=None) -> subprocess.CompletedProcess:
    """Runs a job to its end (in `env`, default this process's); exits, showing its output, if it failed."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def value(stdout: str, key: str) -> str:
    """The value of the last `key value` line a job printed."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(key + " "):
            return line[len(key) + 1:].strip()
    raise SystemExit(f"no {key!r} line in:\n{stdout}")


def median(xs) -> float:
    return statistics.median(xs)
