"""adaptive_gpu_allocator, Fujitsu ACB's PyTorch API on acb (issue 13 item 5), with the real
torch package and the CPU standing in for the granted GPU (ACB_TORCH_DEVICE=cpu). Skipped when
torch is not installed, like test_torch.py. The ACB-style training script
(examples/fujitsu-acb/train.py) runs unchanged against an acb-assigner that gpu_assigner
starts, found through AGA_GPU_ALLOC_SERVER_ADDRESS/PORT."""
import os
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import acb_broker as acb  # noqa: E402
import acb_broker.torch as acb_torch  # noqa: E402
from adaptive_gpu_allocator import PyTorchAdaptiveGPUAllocator, PyTorchDDPAdaptiveGPUAllocator  # noqa: E402

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")
needs_binary = pytest.mark.skipif(not os.environ.get("ACB_ASSIGNER_BIN"), reason="ACB_ASSIGNER_BIN not set")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.normpath(os.path.join(PKG_ROOT, "..", "..", "examples", "fujitsu-acb", "train.py"))


def _holders(job):
    with acb.Client(assigner=ASSIGNER) as c:
        return [g["id"] for g in c.status()["gpus"] if any(h["job"] == job for h in g.get("holders", []))]


def _released(job):
    deadline = time.monotonic() + 10
    while _holders(job) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _holders(job) == []


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("ACB_TORCH_DEVICE", "cpu")  # the CPU stands in for the granted GPU
    monkeypatch.setenv("ACB_EAGER_RELEASE", "1")  # so that a phase's end shows in the status at once
    monkeypatch.delenv("AGA_REQUEST_DEVICE", raising=False)
    if ASSIGNER is not None:
        monkeypatch.setenv("ACB_ASSIGNER", ASSIGNER)
    return monkeypatch


@needs_assigner
def test_the_fujitsu_calls_hold_the_gpu_between_begin_and_end(env):
    model, opt, sched = _model()
    env.setenv("ACB_JOB_ID", "aga-manual")
    allocator = PyTorchAdaptiveGPUAllocator(model, opt, sched, "cuda")
    assert allocator.brokered and allocator.get_device() == torch.device("cpu")
    assert _holders("aga-manual") == []
    asked = []
    real = acb_torch.on_device
    env.setattr(acb_torch, "on_device", lambda *objs, **kw: (asked.append((objs, kw)), real(*objs, **kw))[1])
    device = allocator.on_device_begin(memory_usage_hint="2GiB")
    assert device == allocator.get_device() == torch.device("cpu")  # the CPU standing in
    # The hint is the request's memory (a whole GPU under this assigner's simple scheduler).
    [(objs, kw)] = asked
    assert objs == (model, opt) and kw["memory"] == "2GiB"
    assert len(_holders("aga-manual")) == 1 and acb_torch.lease().memory_per_gpu >= 2 << 30
    with pytest.raises(acb.AlreadyActive):
        allocator.on_device_begin()
    batch = {"x": torch.randn(2, 4), "pair": (torch.ones(1), [torch.zeros(1)]), "n": 3}
    moved = allocator.move_tensor_to_device(batch)
    assert moved["n"] == 3 and isinstance(moved["pair"], tuple) and torch.equal(moved["x"], batch["x"])
    model(moved["x"]).sum().backward()
    opt.step()
    sched.step()
    allocator.on_device_end()
    assert _released("aga-manual") and acb_torch.lease() is None
    assert opt.state and all(s["exp_avg"].device.type == "cpu" for s in opt.state.values())
    with pytest.raises(acb.NotActive):
        allocator.on_device_end()

    # no_release: the phase goes on, the GPU stays held, the next begin returns at once.
    allocator.on_device_begin()
    allocator.on_device_end(no_release=True)
    held = _holders("aga-manual")
    assert len(held) == 1
    assert allocator.on_device_begin() == torch.device("cpu") and _holders("aga-manual") == held
    allocator.on_device_end()
    assert _released("aga-manual")

    # finalize ends a phase still going and closes the client; it is idempotent.
    allocator.on_device_begin()
    allocator.finalize()
    allocator.finalize()
    assert _released("aga-manual")
    with pytest.raises(ValueError, match="finalized"):
        allocator.on_device_begin()


def test_aga_request_device_cpu_runs_with_no_assigner_at_all(env):
    env.setenv("ACB_ASSIGNER", "unix:/nonexistent/acb.sock")  # would fail if it were asked
    env.setenv("AGA_REQUEST_DEVICE", "cpu")
    model, opt, sched = _model()
    with PyTorchAdaptiveGPUAllocator(model, opt, sched, "cuda") as allocator:
        assert not allocator.brokered
        assert allocator.on_device_begin(memory_usage_hint=1 << 30) == torch.device("cpu")
        allocator.on_device_end()
    env.delenv("AGA_REQUEST_DEVICE")
    # A CPU device, as a program without a GPU passes it, is not brokered either.
    assert not PyTorchAdaptiveGPUAllocator(model, opt, sched, "cpu").brokered


def test_bad_values_are_refused_before_the_assigner_is_asked(env):
    env.setenv("ACB_ASSIGNER", "unix:/nonexistent/acb.sock")
    model, opt, sched = _model()
    env.setenv("AGA_REQUEST_DEVICE", "tpu")
    with pytest.raises(ValueError, match="AGA_REQUEST_DEVICE='tpu': expected any, cuda or cpu"):
        PyTorchAdaptiveGPUAllocator(model, opt, sched, "cuda")
    env.delenv("AGA_REQUEST_DEVICE")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        PyTorchAdaptiveGPUAllocator(opt, opt, sched, "cuda")
    with pytest.raises(TypeError, match="optimizer"):
        PyTorchAdaptiveGPUAllocator(model, model, sched, "cuda")
    for kw, err in (({"world_size": 0, "rank": 0}, ValueError), ({"world_size": 2, "rank": 2}, ValueError),
                    ({"world_size": 2, "rank": -1}, ValueError), ({"world_size": "2", "rank": 0}, TypeError)):
        with pytest.raises(err):
            PyTorchDDPAdaptiveGPUAllocator(model, opt, sched, "cuda", **kw)


@needs_assigner
def test_a_ddp_rank_is_a_job_of_its_own_pinned_to_its_gpu(env):
    env.setenv("ACB_JOB_ID", "aga-ddp")
    model, opt, sched = _model()
    allocator = PyTorchDDPAdaptiveGPUAllocator(model, opt, sched, "cuda", world_size=2, rank=1)
    try:
        allocator.on_device_begin()
        first = _holders("aga-ddp-rank1")
        assert len(first) == 1
        allocator.on_device_end()
        allocator.on_device_begin()
        assert _holders("aga-ddp-rank1") == first  # pinned to the GPU of its first grant
        allocator.on_device_end()
    finally:
        allocator.finalize()
    assert _released("aga-ddp-rank1")


def _run(args, **env):
    e = dict(os.environ, PYTHONPATH=PKG_ROOT, ACB_TORCH_DEVICE="cpu")
    for k in ("ACB_ASSIGNER", "AGA_REQUEST_DEVICE", "AGA_ENABLE_AUTO", "AGA_GPU_ALLOC_SERVER_ADDRESS",
              "AGA_GPU_ALLOC_SERVER_PORT"):
        e.pop(k, None)
    e.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e, timeout=300)


@needs_binary
def test_an_acb_style_training_script_runs_unchanged_and_brokered(tmp_path):
    """gpu_assigner starts the daemon on TCP with simulated GPUs; the unmodified script finds it
    through Fujitsu's variables, under agarun whose profile counts its GPU phases; its weights
    come out bitwise those of the same script on the CPU with no assigner."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ga = ["-m", "acb_broker.gpu_assigner", "--address", "127.0.0.1", "--port", str(port), "--scheduler", "gpu-sharing",
          "--gpu-list", "0"]
    runtime = {"ACB_GPU_ASSIGNER_DIR": str(tmp_path)}
    plain = _run([TRAIN, "3", "50"], AGA_REQUEST_DEVICE="cpu", ACB_ASSIGNER="unix:/nonexistent/acb.sock")
    assert plain.returncode == 0, plain.stderr
    started = _run([*ga, "start"], **runtime)
    assert started.returncode == 0, started.stderr
    try:
        aga = {"AGA_GPU_ALLOC_SERVER_ADDRESS": "127.0.0.1", "AGA_GPU_ALLOC_SERVER_PORT": str(port)}
        trace = tmp_path / "train.json"
        brokered = _run(["-m", "acb_broker.agarun", "--job", "acb-style", "--eager", "--profile", str(trace), "--",
                         sys.executable, TRAIN, "3", "50"], **aga)
        assert brokered.returncode == 0, brokered.stderr
        assert "job acb-style" in brokered.stderr and "3 GPU phases" in brokered.stderr, brokered.stderr
        assert brokered.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1]  # the checksum
        assert brokered.stdout.count("epoch ") == 3

        # Fujitsu's auto mode, AGA_ENABLE_AUTO=1, on the program made for acb's auto mode.
        fold = os.path.join(PKG_ROOT, "..", "..", "examples", "alphafold-pipeline", "fold_auto.py")
        small = ["--proteins", "3", "--msa", "0.3", "--steps", "3", "--width", "64"]
        plain_fold = _run([fold, *small])
        auto = _run(["-m", "acb_broker.agarun", "--idle-ms", "100", "--eager", "--profile", str(tmp_path / "fold.json"),
                     "--", sys.executable, fold, *small], AGA_ENABLE_AUTO="1", **aga)
        assert auto.returncode == 0, auto.stderr
        assert "SIMULATED GPU" in auto.stderr and "4 GPU phases" in auto.stderr, auto.stderr
        assert auto.stdout.splitlines()[-1] == plain_fold.stdout.splitlines()[-1]
    finally:
        stopped = _run([*ga, "stop"], **runtime)
    assert stopped.returncode == 0, stopped.stderr
