"""GPU tier: two programs with no acb code in them share one GPU under `agarun --mode auto` (the
CUDA interposer, libacb_preload.so, gates their driver calls): CuPy if it is importable and sees
the GPU, else TensorFlow if it does, else PyTorch (it says which, and why). Each program
alternates GPU work (--steps products of 4096x4096 float32 matrices: a few seconds of kernels)
and a CPU phase (--cpu seconds of sleep), --phases times, then prints a checksum. Both run
alone first, one after the other, without acb; then both at once under agarun, against the one
assigner (which must see one GPU). The checksums must be equal both ways, and the assigner's
record (`acb-assigner watch --replay --no-follow --json`) must show the GPU going back and forth:
each program granted it more than once, never two holders of whole-GPU requests at once. The
last line is the figures as one JSON object.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python gpu-tier/auto_two_programs.py [--phases 4]
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from common import HERE, agarun, assigner, run_job, torch_with_cuda, value

N = 4096
PROBES = {  # does the framework import and see a GPU? (run in a process of its own)
    "cupy": "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0",
    "tensorflow": "import tensorflow as tf; assert tf.config.list_physical_devices('GPU')",
}
# TensorFlow takes most of the GPU's memory at start unless told to grow: every byte of it would
# move at each release.
JOB_ENV = dict(os.environ, TF_FORCE_GPU_ALLOW_GROWTH="true", TF_CPP_MIN_LOG_LEVEL="2", TF_DETERMINISTIC_OPS="1")


def job(fw: str, seed: int, phases: int, steps: int, cpu: float) -> None:
    """One program: no acb in it. Its state is x (N x N); each GPU phase is x = tanh(x @ w), `steps` times."""
    if fw == "cupy":
        import cupy as cp

        rs = cp.random.RandomState(seed)
        x = rs.standard_normal((N, N), dtype=cp.float32)
        w = rs.standard_normal((N, N), dtype=cp.float32) / N ** 0.5

        def gpu(x):
            for _ in range(steps):
                x = cp.tanh(x @ w)
            cp.cuda.Device().synchronize()
            return x

        def checksum(x):
            return float(x.astype(cp.float64).sum())
    elif fw == "tensorflow":
        import tensorflow as tf

        with tf.device("/GPU:0"):
            x = tf.random.stateless_normal((N, N), seed=[seed, 0])
            w = tf.random.stateless_normal((N, N), seed=[seed, 1]) / N ** 0.5

        def gpu(x):
            with tf.device("/GPU:0"):
                for _ in range(steps):
                    x = tf.tanh(tf.matmul(x, w))
                float(tf.reduce_sum(x))  # waits for the kernels
            return x

        def checksum(x):
            return float(tf.reduce_sum(tf.cast(x, tf.float64)))
    else:
        import torch

        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(N, N, device="cuda", generator=g)
        w = torch.randn(N, N, device="cuda", generator=g) / N ** 0.5

        def gpu(x):
            with torch.no_grad():
                for _ in range(steps):
                    x = torch.tanh(x @ w)
            torch.cuda.synchronize()
            return x

        def checksum(x):
            return x.double().sum().item()
    t0 = time.monotonic()
    busy = 0.0
    for _ in range(phases):
        t = time.monotonic()
        x = gpu(x)
        busy += time.monotonic() - t
        time.sleep(cpu)  # CPU phase: no CUDA call
    print(f"gpu-seconds {busy!r}")
    print(f"seconds {time.monotonic() - t0!r}")
    print(f"checksum {checksum(x)!r}")


def framework() -> str:
    """CuPy, else TensorFlow, else PyTorch; says why it passed over any."""
    for fw, probe in PROBES.items():
        if importlib.util.find_spec(fw) is None:
            print(f"{fw}: not installed")
            continue
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=JOB_ENV, timeout=300)
        if r.returncode == 0:
            return fw
        print(f"{fw}: installed, but it does not see a GPU: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return "torch"


def record(names: dict) -> dict:
    """What the assigner's record says of the jobs in `names` (job name -> program index)."""
    binary = os.environ.get("ACB_ASSIGNER_BIN", os.path.join(HERE, "..", "target", "release", "acb-assigner"))
    r = subprocess.run([binary, "watch", "--assigner", assigner(), "--replay", "--no-follow", "--json"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        sys.exit(f"acb-assigner watch failed ({r.returncode}):\n{r.stderr}")
    whole, leases, holding, by_client = {}, {}, {}, {}
    grants, overlaps, switches, last, order = [0] * len(names), 0, 0, None, []
    for line in r.stdout.splitlines():
        e = json.loads(line)
        kind, client = e["event"], e.get("client")
        if kind == "requested" and e["job"] in names:
            whole[client, e["request"]] = e.get("memory_per_gpu") is None
        elif kind == "granted" and e["job"] in names:
            i, key = names[e["job"]], (client, e["lease"])
            w = whole.get((client, e["request"]), True)
            grants[i] += 1
            for g in e["gpus"]:
                held = holding.setdefault(g, {})
                overlaps += sum(1 for other in held.values() if w and other)
                held[key] = w
            leases[key] = e["gpus"]
            by_client.setdefault(client, set()).add(key)
            switches += last is not None and last != i
            last = i
            order.append(i)
        elif kind in ("released", "taken-back") and (client, e["lease"]) in leases:
            for g in leases.pop((client, e["lease"])):
                holding.get(g, {}).pop((client, e["lease"]), None)
        elif kind == "client-gone":
            for key in by_client.pop(client, set()) & leases.keys():
                for g in leases.pop(key):
                    holding.get(g, {}).pop(key, None)
    return {"grants": grants, "overlaps": overlaps, "switches": switches, "order": order,
            "whole_gpu": all(whole.values()) if whole else None}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=["cupy", "tensorflow", "torch"], help="(internal) one program, in this framework")
    p.add_argument("--phases", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="matrix products per GPU phase (default 1000)")
    p.add_argument("--cpu", type=float, default=2.0, help="seconds of each CPU phase (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.job:
        job(args.job, args.seed, args.phases, args.steps, args.cpu)
        return 0
    if torch_with_cuda() is None:
        return 0
    import acb_broker as acb
    from acb_broker.agarun import _interposer

    if _interposer() is None:
        sys.exit("libacb_preload.so (the CUDA interposer) is not beside libacb: build it with "
                 "cargo build --release -p acb-preload and carry target/release/libacb_preload.so")
    with acb.Client(assigner=assigner(), connect_retries=0) as c:
        gpus = c.status().get("gpus", [])
    if len(gpus) != 1:
        sys.exit(f"the assigner sees {len(gpus)} GPUs, not one: start it with --gpus auto:0")
    fw = framework()
    print(f"framework: {fw}; 2 programs, each {args.phases} phases of {args.steps} products of {N}x{N} float32 "
          f"matrices then {args.cpu} s of sleep")

    def cmd(i):
        return [sys.executable, os.path.abspath(__file__), "--job", fw, "--seed", str(args.seed + i),
                "--phases", str(args.phases), "--steps", str(args.steps), "--cpu", str(args.cpu)]

    alone, t_alone, busy = [], [], []
    for i in range(2):
        t0 = time.monotonic()
        r = run_job(cmd(i), JOB_ENV)
        t_alone.append(time.monotonic() - t0)
        alone.append(value(r.stdout, "checksum"))
        busy.append(float(value(r.stdout, "gpu-seconds")) / args.phases)
    names = {f"gpu-tier-two-{os.getpid()}-{i}": i for i in range(2)}
    t0 = time.monotonic()
    procs = [subprocess.Popen(agarun("--mode", "auto", "--job", name, "--", *cmd(i)), env=JOB_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, i in names.items()]
    together = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"program {i} under agarun failed ({proc.returncode}):\n{out}\n{err}")
        if "without acb" in err or "unbrokered" in err or "not found beside libacb" in err:
            sys.exit(f"program {i} ran without automatic mode:\n{err}")
        together.append(value(out, "checksum"))
    t_together = time.monotonic() - t0
    rec = record(names)
    same = alone == together
    alternated = min(rec["grants"]) > 1 and rec["overlaps"] == 0
    print(f"GPU phase alone: {busy[0]:.2f} s and {busy[1]:.2f} s")
    print(f"one after the other without acb: {sum(t_alone):.1f} s; both at once under agarun --mode auto: "
          f"{t_together:.1f} s ({sum(t_alone) / t_together:.2f}x)")
    print(f"checksums {'equal' if same else 'DIFFER'}: alone {alone}, together {together}")
    print(f"assigner's record: grants {rec['grants'][0]} and {rec['grants'][1]}, {rec['switches']} hand-overs "
          f"(order {''.join('AB'[i] for i in rec['order'])}), {rec['overlaps']} times two holders at once "
          f"({'whole-GPU requests' if rec['whole_gpu'] else 'NOT all whole-GPU requests'}): "
          f"{'the GPU alternated' if alternated else 'the GPU did NOT alternate as expected'}")
    print(json.dumps({"check": "auto-two-programs", "framework": fw, "alone_s": t_alone, "together_s": t_together,
                      "gpu_phase_s": busy, "checksums_equal": same, **rec, "alternated": alternated}))
    return 0 if same and alternated and rec["whole_gpu"] else 1


if __name__ == "__main__":
    sys.exit(main())
