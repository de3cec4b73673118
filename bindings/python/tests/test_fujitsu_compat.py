"""The way in for users of Fujitsu's ACB (issue 13 item 5), without torch: gpu_assigner
start/status/stop against the real acb-assigner (ACB_ASSIGNER_BIN, which the Rust harness sets),
the AGA_* environment honoured by libacb and agarun, and bad values refused. The PyTorch side
(adaptive_gpu_allocator, an ACB-style training script) is in test_adaptive_gpu_allocator.py."""
import os
import re
import socket
import subprocess
import sys

import pytest

import acb_broker as acb
from acb_broker import _aga, gpu_assigner

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")
needs_binary = pytest.mark.skipif(not os.environ.get("ACB_ASSIGNER_BIN"), reason="ACB_ASSIGNER_BIN not set")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.normpath(os.path.join(PKG_ROOT, "..", ".."))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **env):
    e = dict(os.environ, PYTHONPATH=PKG_ROOT)
    e.pop("ACB_ASSIGNER", None)
    e.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e, timeout=120)


def ga(runtime, *args, **env):
    return run(["-m", "acb_broker.gpu_assigner", *args], ACB_GPU_ASSIGNER_DIR=str(runtime), **env)


# ---------------------------------------------------------------------------------------------
# The environment


def test_aga_request_device_and_enable_auto_are_read_strictly():
    assert _aga.request_device({}) is None and _aga.request_device({"AGA_REQUEST_DEVICE": " "}) is None
    for v in ("any", "cuda", "cpu", "CUDA"):
        assert _aga.request_device({"AGA_REQUEST_DEVICE": v}) == v.lower()
    with pytest.raises(ValueError, match="AGA_REQUEST_DEVICE='gpu': expected any, cuda or cpu"):
        _aga.request_device({"AGA_REQUEST_DEVICE": "gpu"})
    assert _aga.auto_enabled({"AGA_ENABLE_AUTO": "1"}) and not _aga.auto_enabled({})
    assert not _aga.auto_enabled({"AGA_ENABLE_AUTO": "0"})
    with pytest.raises(ValueError, match="AGA_ENABLE_AUTO='on': expected 1 or 0"):
        _aga.auto_enabled({"AGA_ENABLE_AUTO": "on"})


def _agarun_env(*opts, **env):
    probe = "import os; print(os.environ['ACB_MODE'], os.environ.get('PYTHONPATH', '').count('_auto'))"
    return run(["-m", "acb_broker.agarun", *opts, "--", sys.executable, "-c", probe], **env)


def test_agarun_honours_aga_enable_auto_and_aga_request_device():
    assert _agarun_env().stdout.split() == ["manual", "0"]
    r = _agarun_env(AGA_ENABLE_AUTO="1")
    assert r.returncode == 0 and r.stdout.split() == ["auto", "1"], r.stderr
    assert _agarun_env("--mode", "manual", AGA_ENABLE_AUTO="1").stdout.split() == ["manual", "0"]  # the flag wins
    r = _agarun_env(AGA_ENABLE_AUTO="1", AGA_REQUEST_DEVICE="cpu")
    assert r.returncode == 0 and r.stdout.split() == ["manual", "0"], r.stderr
    assert "AGA_REQUEST_DEVICE=cpu: the command runs without acb" in r.stderr
    assert _agarun_env(AGA_REQUEST_DEVICE="cuda").returncode == 0


def test_agarun_refuses_bad_aga_values_before_running_anything():
    r = _agarun_env(AGA_REQUEST_DEVICE="gpu")
    assert r.returncode == 2 and r.stdout == ""
    assert "agarun: AGA_REQUEST_DEVICE='gpu': expected any, cuda or cpu" in r.stderr
    r = _agarun_env(AGA_ENABLE_AUTO="maybe")
    assert r.returncode == 2 and "AGA_ENABLE_AUTO='maybe': expected 1 or 0" in r.stderr


def test_the_default_port_is_the_same_in_gpu_assigner_and_libacb():
    with open(os.path.join(REPO, "acb-client", "src", "config.rs")) as f:
        rust = int(re.search(r"pub const AGA_DEFAULT_PORT: u16 = (\d+);", f.read()).group(1))
    assert gpu_assigner.DEFAULT_PORT == rust


def test_bad_aga_server_variables_are_invalid_requests(monkeypatch):
    monkeypatch.delenv("ACB_ASSIGNER", raising=False)
    monkeypatch.setenv("AGA_GPU_ALLOC_SERVER_PORT", "http")
    with pytest.raises(acb.InvalidRequest, match="AGA_GPU_ALLOC_SERVER_PORT=\"http\": expected a port number"):
        acb.Client()
    monkeypatch.setenv("AGA_GPU_ALLOC_SERVER_PORT", "1")
    monkeypatch.setenv("AGA_GPU_ALLOC_SERVER_ADDRESS", "no such host.invalid")
    with pytest.raises(acb.InvalidRequest, match="AGA_GPU_ALLOC_SERVER_ADDRESS"):
        acb.Client()


# ---------------------------------------------------------------------------------------------
# gpu_assigner


def test_gpu_list_maps_onto_the_gpus_acb_assigner_serves():
    spec = gpu_assigner.gpus_spec
    assert spec(None, None)[0] == "fake:1x80GiB" and "SIMULATED" in spec(None, None)[1]
    assert spec([0, 1], None)[0] == "fake:2x80GiB"
    assert spec([0], 0)[0] == "fake:1x80GiB" and "reports no GPU" in spec([0], 0)[1]
    assert spec(None, 4) == ("auto", None) and spec([3, 2, 1, 0], 4) == ("auto", None)
    assert spec([3, 1], 4) == ("auto:1,3", None)  # a subset: only those
    with pytest.raises(gpu_assigner.Refused, match="names GPU 5, but the NVIDIA driver reports 4 GPU"):
        spec([5], 4)
    for bad in ("a,b", "0,0", "-1", ""):
        with pytest.raises(gpu_assigner.Refused):
            gpu_assigner.parse_gpu_list(bad)
    assert gpu_assigner.parse_gpu_list("0, 1") == [0, 1]


def test_gpu_assigner_addresses():
    la = gpu_assigner.listen_address
    assert la(None, None) is None  # acb's default socket
    assert la(None, "7000") == "tcp:127.0.0.1:7000"
    assert la("localhost", "7000") == "tcp:127.0.0.1:7000"
    assert la("10.0.0.1", None) == f"tcp:10.0.0.1:{gpu_assigner.DEFAULT_PORT}"
    assert la("::1", "9") == "tcp:[::1]:9"
    assert gpu_assigner.is_loopback("tcp:[::1]:9") and not gpu_assigner.is_loopback("tcp:10.0.0.1:9")
    for port in ("0", "65536", "x"):
        with pytest.raises(gpu_assigner.Refused, match="expected a port number"):
            la(None, port)


def test_without_acb_assigner_gpu_assigner_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ACB_ASSIGNER_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu_assigner, "_ROOT", str(tmp_path))  # no source tree's target/ either
    with pytest.raises(gpu_assigner.Refused, match="acb-assigner not found: install it"):
        gpu_assigner.find_assigner()


@needs_binary
def test_gpu_assigner_says_what_it_cannot_do(tmp_path):
    r = ga(tmp_path, "--address", "0.0.0.0", "--port", "7000", "start")
    assert r.returncode == 2 and "requires a token on every call: give --auth-token-file" in r.stderr, r.stderr
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    r = ga(tmp_path, "--address", "0.0.0.0", "--auth-token-file", str(token), "start")
    assert r.returncode == 2 and "--tls-cert and --tls-key" in r.stderr and "--insecure" in r.stderr, r.stderr
    r = ga(tmp_path, "--gpu-list", "zero", "start")
    assert r.returncode == 2 and "expected GPU indexes" in r.stderr
    r = ga(tmp_path, "start", ACB_ASSIGNER_BIN=str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "ACB_ASSIGNER_BIN=" in r.stderr and "not an executable" in r.stderr
    r = ga(tmp_path, "stop")
    assert r.returncode == 1 and "not running" in r.stderr
    r = ga(tmp_path, "status")
    assert r.returncode == 1 and "no acb-assigner started by gpu_assigner is running" in r.stderr
    # A daemon that fails at start is reported with its log, and nothing is left recorded.
    r = ga(tmp_path, "--port", str(free_port()), "--gpus", "fake:2x80", "start")
    assert r.returncode == 1 and "exited with status 2 before it was ready" in r.stderr, r.stderr
    assert not (tmp_path / "gpu_assigner.json").exists()


@needs_binary
def test_gpu_assigner_start_status_stop_and_aga_clients(tmp_path, monkeypatch):
    port = free_port()
    flags = ["--address", "localhost", "--port", str(port), "--scheduler", "gpu-sharing", "--gpu-list", "0,1"]
    r = ga(tmp_path, *flags, "start")
    assert r.returncode == 0, r.stderr
    assert f"on tcp:127.0.0.1:{port}" in r.stdout
    assert f"AGA_GPU_ALLOC_SERVER_ADDRESS=127.0.0.1 AGA_GPU_ALLOC_SERVER_PORT={port}" in r.stdout
    if gpu_assigner.nvml_gpu_count() is None:
        assert "serving 2 SIMULATED GPU(s)" in r.stderr, r.stderr
    try:
        again = ga(tmp_path, *flags, "start")
        assert again.returncode == 1 and "already running" in again.stderr
        st = ga(tmp_path, "status")
        assert st.returncode == 0, st.stderr
        assert "acb-assigner running (pid" in st.stdout and "scheduler gpu-sharing" in st.stdout, st.stdout
        assert ga(tmp_path, "--port", str(port), "status").returncode == 0

        # A job finds it through Fujitsu's variables (libacb reads them)...
        monkeypatch.delenv("ACB_ASSIGNER", raising=False)
        monkeypatch.setenv("AGA_GPU_ALLOC_SERVER_ADDRESS", "localhost")
        monkeypatch.setenv("AGA_GPU_ALLOC_SERVER_PORT", str(port))
        with acb.Client(job="aga-job") as c:
            s = c.status()
            assert s["scheduler"] == "gpu-sharing" and len(s["gpus"]) == 2
            with c.on_device(memory="1GiB") as lease:
                assert lease.memory_per_gpu == 1 << 30
        # ...and ACB_ASSIGNER, when set too, wins.
        if ASSIGNER is not None:
            monkeypatch.setenv("ACB_ASSIGNER", ASSIGNER)
            with acb.Client(job="acb-wins") as c:
                assert c.status()["scheduler"] == "simple"
    finally:
        stopped = ga(tmp_path, "stop")
    assert stopped.returncode == 0 and "stopped acb-assigner (pid" in stopped.stdout, stopped.stderr
    assert not (tmp_path / "gpu_assigner.json").exists()
    assert "stopping" in (tmp_path / "gpu_assigner.log").read_text()  # it drained on SIGTERM
    r = ga(tmp_path, "stop")
    assert r.returncode == 1 and "not running" in r.stderr
    assert ga(tmp_path, "status").returncode == 1


@needs_binary
def test_gpu_assigner_never_signals_a_process_it_did_not_start(tmp_path):
    """A record whose pid now belongs to another process (same pid, other start time) is stale."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gpu_assigner.write_record(str(tmp_path), {"pid": other.pid, "start_time": "1", "listen": ["tcp:127.0.0.1:1"]})
        r = ga(tmp_path, "stop")
        assert r.returncode == 1 and "has already exited" in r.stderr, r.stderr
        assert other.poll() is None  # not signalled
        assert not (tmp_path / "gpu_assigner.json").exists()
    finally:
        other.kill()
        other.wait()
