"""acb.torch with the real torch package, on a machine without a GPU: what needs no GPU is the
real thing (the moves, the phases, the gate of auto mode, its idle release, agarun --mode auto);
the CPU stands in for the granted GPU where a test says so. Skipped when torch is not installed
(CI does not install it: the wheel is gigabytes). The GPU tier is in tests/gpu/."""
import os
import subprocess
import sys
import json
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import acb_broker as acb  # noqa: E402
import acb_broker.torch as acb_torch  # noqa: E402

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holders(client, job):
    return [g["id"] for g in client.status()["gpus"] if any(h["job"] == job for h in g.get("holders", []))]


def _released(client, job):
    """Whether `job` holds no GPU, within 10 s (a phase's end reaches the assigner just after)."""
    deadline = time.monotonic() + 10
    while _holders(client, job) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _holders(client, job) == []


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return model, opt


def test_a_move_reaches_every_tensor_and_keeps_every_object():
    model, opt = _model_and_optimizer()
    loose = torch.randn(3, requires_grad=True)
    loose.grad = torch.ones(3)
    nested = {"a": torch.zeros(2), "b": [torch.ones(1), (torch.ones(4),)]}
    params = list(model.parameters())
    ids = [id(p) for p in params] + [id(loose)]
    slots = []
    for o in (model, opt, loose, nested):
        acb_torch._tensors_of(o, slots)
    # Without a GPU there is no second device to move to: a change of dtype marks what was moved.
    moved = []

    def mark(t, device, pin):
        moved.append(t)
        return t.to(torch.float64)

    acb_torch._move.__globals__["_moved"], real = mark, acb_torch._moved
    try:
        acb_torch._move(slots, torch.device("cpu"), pin=False)
    finally:
        acb_torch._move.__globals__["_moved"] = real
    f64 = torch.float64
    assert [id(p) for p in model.parameters()] + [id(loose)] == ids
    assert all(p.dtype == f64 and p.grad.dtype == f64 for p in params)
    assert all(b.dtype == f64 for b in model.buffers() if b.is_floating_point())
    assert loose.dtype == f64 and loose.grad.dtype == f64
    assert nested["a"].dtype == f64 and nested["b"][0].dtype == f64 and nested["b"][1][0].dtype == f64
    for state in opt.state.values():
        assert state["exp_avg"].dtype == f64 and state["exp_avg_sq"].dtype == f64
        assert state["step"].dtype == torch.float32  # 'step' stays where Adam keeps it
    # parameters and their grads, 3 BatchNorm buffers, loose and its grad, 2 Adam moments each, 3 nested
    assert len(moved) == 2 * len(params) + 3 + 2 + 2 * len(opt.state) + 3


def test_unknown_objects_are_refused_before_the_assigner_is_asked():
    with pytest.raises(TypeError, match="not int"):
        with acb_torch.on_device(torch.nn.Linear(2, 2), 5, client=acb.Client(assigner="unix:/nonexistent")):
            pass


@no_cuda
def test_without_cuda_a_granted_gpu_cannot_be_used_and_says_why():
    with pytest.raises(acb.NoCuda, match="no CUDA device"):
        acb_torch.torch_device(acb.Device(0, "fake-0"))


@needs_assigner
def test_manual_mode_holds_the_gpu_for_the_block_only(monkeypatch):
    monkeypatch.setenv("ACB_TORCH_DEVICE", "cpu")  # the CPU stands in for the GPU
    model, opt = _model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    moves = []
    real_move = acb_torch._move
    monkeypatch.setattr(acb_torch, "_move", lambda slots, device, pin: (moves.append(len(slots)),
                                                                        real_move(slots, device, pin)))
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # no state until its first step
    with acb.Client(assigner=ASSIGNER, job="torch-manual", eager=True) as c:
        with acb_torch.on_device(model, fresh, client=c):
            model(torch.randn(4, 8)).sum().backward()
            fresh.step()
        # The momentum buffers made inside the block leave the GPU too (one per parameter).
        assert moves == [1, 1 + len(list(model.parameters()))], moves
        with acb_torch.on_device(model, opt, client=c) as device:
            assert device == torch.device("cpu")
            assert _holders(c, "torch-manual") == [acb_torch.lease().devices[0].index]
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
        assert _released(c, "torch-manual")
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        with pytest.raises(RuntimeError, match="boom"):
            with acb_torch.on_device(model, client=c):
                raise RuntimeError("boom")
        assert _released(c, "torch-manual")
        with pytest.raises(acb.NotActive):
            c.on_device_end()
        assert acb_torch.lease() is None


def _series(n=20):
    torch.manual_seed(1)
    x = torch.randn(64, 64, dtype=torch.float64)
    w = torch.randn(64, 64, dtype=torch.float64)
    for _ in range(n):
        x = torch.tanh(x @ w)
    return x


@needs_assigner
def test_auto_mode_gates_operations_and_releases_when_idle():
    expected = _series()
    client = acb.Client(assigner=ASSIGNER, job="torch-auto", eager=True)
    assert acb_torch.enable_auto(idle_ms=100, client=client, _device_type="cpu")  # CPU for the GPU
    try:
        gate = acb_torch._auto[0]
        assert gate.acquisitions == 0  # nothing touched the device yet
        got = _series()
        assert gate.acquisitions == 1 and gate.held
        assert torch.equal(got, expected)  # bitwise the same as without acb
        deadline = time.monotonic() + 10
        while gate.held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not gate.held and gate.releases == 1
        assert _released(client, "torch-auto")  # eager: given back
        assert torch.equal(_series(), expected)  # the next operation waits for a grant again
        assert gate.acquisitions == 2
        gate.enter()  # an operation in flight is never released under
        assert gate.release() is False
        gate.leave()
        assert gate.release() is True and _released(client, "torch-auto")
    finally:
        acb_torch.disable_auto()
        client.close()
    assert not acb_torch.auto_enabled()


def test_the_idle_thread_survives_a_failing_release():
    class Flaky:
        """A client whose first two ends fail, as a CUDA error would make them."""

        def __init__(self):
            self.ends = 0

        def on_device_begin(self, *args):
            pass

        def on_device_end(self):
            self.ends += 1
            if self.ends <= 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")

    gate = acb_torch._Gate(Flaky(), idle_ms=10, device_type="cpu")
    try:
        gate.enter()
        gate.leave()
        deadline = time.monotonic() + 10
        while gate.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not gate.held and gate.client.ends == 3 and gate._thread.is_alive()
    finally:
        gate.close()


def test_idle_ms_must_be_a_number_of_milliseconds():
    with pytest.raises(ValueError, match="idle_ms"):
        acb_torch.enable_auto(idle_ms=-1)
    os.environ["ACB_IDLE_MS"] = "soon"
    try:
        with pytest.raises(ValueError, match="ACB_IDLE_MS"):
            acb_torch.enable_auto()
    finally:
        del os.environ["ACB_IDLE_MS"]


FOLD_AUTO = os.path.join(PKG_ROOT, "..", "..", "examples", "alphafold-pipeline", "fold_auto.py")
SMALL = ["--proteins", "3", "--msa", "0.3", "--steps", "3", "--width", "64"]


def _run(args, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=PKG_ROOT, **env))


def _agarun(*args, **env):
    return _run([sys.executable, "-m", "acb_broker.agarun", "--assigner", ASSIGNER, *args], **env)


@no_cuda
@needs_assigner
def test_agarun_auto_mode_without_cuda_warns_once_and_runs_the_program_unchanged():
    plain = _run([sys.executable, FOLD_AUTO, *SMALL])
    assert plain.returncode == 0, plain.stderr
    auto = _agarun("--mode", "auto", "--idle-ms", "50", "--", sys.executable, FOLD_AUTO, *SMALL)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1]  # the checksum
    warnings = [line for line in auto.stderr.splitlines() if line.startswith("acb auto mode:")]
    assert len(warnings) == 1 and "no CUDA" in warnings[0] and "without acb" in warnings[0], auto.stderr


@needs_assigner
def test_agarun_auto_mode_brokers_an_unmodified_program(tmp_path):
    """The whole path of auto mode with the CPU standing in for the GPU: agarun's sitecustomize
    turns it on at `import torch`, the gate acquires at the first operation of each GPU phase,
    the idle release gives the GPU back during each MSA search, and the profile sees it all."""
    plain = _run([sys.executable, FOLD_AUTO, *SMALL])
    trace = tmp_path / "fold.json"
    auto = _agarun("--mode", "auto", "--idle-ms", "100", "--eager", "--job", "fold-auto",
                   "--profile", str(trace), "--", sys.executable, FOLD_AUTO, *SMALL, ACB_TORCH_DEVICE="cpu")
    assert auto.returncode == 0, auto.stderr
    assert "SIMULATED GPU" in auto.stderr
    assert auto.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1]  # bitwise the same results
    jobs = json.loads(trace.read_text())["jobs"]
    assert len(jobs) == 1
    gpu_phases = [p for p in jobs[0]["phases"] if "gpu" in p]
    # The model's set-up and then each protein is a GPU phase, separated by the MSA searches.
    assert len(gpu_phases) == 4, jobs[0]["phases"]


@needs_assigner
@pytest.mark.parametrize("static", [False, True])
def test_the_demo_job_speaks_the_demo_protocol(static):
    """acb-assigner demo starts `python -m acb_broker.demo_job` on real GPUs; here the CPU stands in."""
    r = _run([sys.executable, "-m", "acb_broker.demo_job", "--items", "2", "--cpu", "50ms", "--gpu", "30ms",
              "--memory", "4096", *(["--static"] if static else [])],
             ACB_ASSIGNER=ASSIGNER, ACB_JOB_ID=f"demo-job-{static}", ACB_TORCH_DEVICE="cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")[:-1]
    phase = ["gpu-start", "gpu-end"]
    got = [line for line in lines if line.startswith("got ")]
    assert got and all(line in ("got 0", "got 1") for line in got)
    if static:
        assert lines == ["want", got[0], *phase, "item", *phase, "item", "ended", "swapped 0 0"]
    else:
        # With the CPU standing in for the GPU nothing moves, and the job says so.
        assert lines == ["want", got[0], *phase, "ended", "item", "want", got[1], *phase, "ended", "item",
                         "swapped 0 0"]
