"""The Python package against a real assigner (ACB_TEST_ASSIGNER, two simulated GPUs), as the
Rust test suite runs it (tests/libacb/tests/python.rs)."""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import acb_broker as acb
from acb_broker import _ffi

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")
HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)


def test_every_function_of_the_header_is_declared():
    with open(os.path.join(PKG_ROOT, "..", "..", "include", "acb.h")) as f:
        text = f.read()
    names = set(_ffi.parse_header(text))
    assert {"acb_on_device_begin", "acb_on_device_end", "acb_client_new", "acb_status_message"} <= names
    assert names == set(_ffi.SIGNATURES)
    assert acb.ABI_VERSION == _ffi.lib.acb_abi_version()


def test_bad_python_arguments_raise_before_reaching_c():
    with pytest.raises(TypeError):
        acb.Client(assigner=5)
    c = acb.Client(assigner="unix:/nonexistent/acb.sock", connect_retries=0)
    with pytest.raises(TypeError):
        c.on_device_begin(gpus="1")
    with pytest.raises(ValueError):
        c.on_device_begin(gpus=0)
    with pytest.raises(ValueError):
        c.on_device_begin(memory="lots")
    with pytest.raises(acb.UnitError, match="unknown unit"):
        c.on_device_begin(memory="512 mb")
    with pytest.raises(ValueError):
        c.on_device_begin(memory=0)
    with pytest.raises(ValueError):
        c.on_device_begin(timeout=-1)
    with pytest.raises(TypeError):
        c.on_device_begin(timeout="soon")
    c.close()
    c.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        c.on_device_end()
    with pytest.raises(acb.InvalidRequest, match="unix:/path"):
        acb.Client(assigner="nonsense")
    assert acb.parse_size("1.5GiB") == 3 << 29 and acb.parse_size(1024) == 1024
    assert acb.parse_size("512M") == 512 << 20  # the grammar of acb-core's units (test_units.py)


def test_an_unreachable_assigner_is_reported_after_bounded_retries():
    t0 = time.monotonic()
    with acb.Client(assigner="unix:/nonexistent/acb.sock", connect_retries=2, connect_timeout=0.1) as c:
        with pytest.raises(acb.AssignerUnavailable, match="3 attempts"):
            c.on_device_begin()
        with pytest.raises(acb.NotActive):
            c.on_device_end()
    assert time.monotonic() - t0 < 10


@needs_assigner
def test_a_gpu_phase_as_a_with_block():
    with acb.Client(assigner=ASSIGNER, job="pytest") as c:
        with c.on_device(gpus=1) as lease:
            assert lease.id > 0
            assert len(lease.devices) == 1 and lease.devices[0].uuid.startswith("fake-")
            with pytest.raises(acb.AlreadyActive):
                c.on_device_begin()
        with pytest.raises(acb.NotActive):
            c.on_device_end()
        # Lazy release: the next phase reuses the kept lease.
        with c.on_device() as again:
            assert again.id == lease.id


@needs_assigner
def test_timeouts_and_refusals_are_typed():
    a, b = acb.Client(assigner=ASSIGNER, job="holder-a"), acb.Client(assigner=ASSIGNER, job="holder-b")
    with acb.Client(assigner=ASSIGNER, job="waiter") as waiter:
        with a.on_device(), b.on_device():  # both GPUs held, both busy
            with pytest.raises(acb.Timeout):
                waiter.on_device_begin(timeout=0.3)
        a.close()
        b.close()
        with pytest.raises(acb.Rejected, match="at most 1 GPU"):
            waiter.on_device_begin(gpus=2)  # the simple scheduler grants one GPU per request
        with waiter.on_device(timeout=10):
            pass


@needs_assigner
def test_the_module_level_functions_use_the_environment(monkeypatch):
    monkeypatch.setenv("ACB_ASSIGNER", ASSIGNER)
    monkeypatch.setenv("ACB_JOB_ID", "module-level")
    lease = acb.on_device_begin()
    assert lease.devices
    acb.on_device_end()
    with acb.on_device(gpus=1) as lease:
        assert lease.id > 0


@needs_assigner
def test_status_says_what_the_assigner_offers():
    with acb.Client(assigner=ASSIGNER) as c:
        s = c.status()
    assert s["scheduler"] == "simple"
    assert len(s["gpus"]) == 2 and all(g["simulated"] for g in s["gpus"])


@needs_assigner
def test_a_client_used_after_fork_raises_forked_in_the_child():
    with acb.Client(assigner=ASSIGNER, job="parent") as c:
        with c.on_device():
            pass
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only os._exit, never the parent's finalizers
            os.close(r)
            try:
                c.on_device_begin(timeout=5)
                out = "no error"
            except acb.Forked as e:
                out = "Forked: " + str(e)
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = type(e).__name__ + ": " + str(e)
            os.write(w, out.encode())
            os._exit(0)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 30)  # bounded: before libacb saw forks, begin hung
        if not ready:
            os.kill(pid, signal.SIGKILL)
        with os.fdopen(r) as f:
            said = f.read() if ready else "the child hung"
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert said.startswith("Forked: ") and "make a new one in the child" in said, said
        with c.on_device():  # the parent's client goes on
            pass


def agarun(*args, **kw):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "acb_broker.agarun", *args], capture_output=True, text=True, env=env, **kw)


@needs_assigner
def test_agarun_configures_the_command_and_returns_its_status():
    r = agarun("--assigner", ASSIGNER, "--job", "j1", "--gpus", "2", "--memory", "1GiB", "--",
               sys.executable, "-c",
               "import os,sys; print(os.environ['ACB_ASSIGNER'], os.environ['ACB_JOB_ID'], "
               "os.environ['ACB_GPUS'], os.environ['ACB_MEMORY'], os.environ['ACB_MODE']); sys.exit(7)")
    assert r.returncode == 7, r.stderr
    assert r.stdout.split() == [ASSIGNER, "j1", "2", "1GiB", "manual"]


@needs_assigner
def test_agarun_runs_a_python_job_in_manual_mode():
    r = agarun("--assigner", ASSIGNER, "--job", "pipeline", "--", sys.executable,
               os.path.join(PKG_ROOT, "examples", "pipeline.py"), "2", "10", "10")
    assert r.returncode == 0, r.stderr
    assert "done: 2 phases" in r.stdout


@needs_assigner
def test_agarun_check_says_what_the_assigner_offers():
    r = agarun("--check", "--assigner", ASSIGNER)
    assert r.returncode == 0, r.stderr
    assert "scheduler simple" in r.stdout and "SIMULATED" in r.stdout


def test_agarun_refuses_what_it_cannot_do():
    r = agarun("--check", "--assigner", "unix:/nonexistent/acb.sock")
    assert r.returncode == 1 and "not reachable" in r.stderr
    r = agarun("--idle-ms", "5", "--", "true")
    assert r.returncode == 2 and "--mode auto" in r.stderr
    r = agarun("--mode", "auto", "--idle-ms", "-1", "--", "true")
    assert r.returncode == 2 and "negative" in r.stderr
    r = agarun("--gpus", "1")
    assert r.returncode == 2 and "no command" in r.stderr
    r = agarun("--", "/nonexistent/program")
    assert r.returncode == 127
    r = agarun("--memory", "lots", "--", "true")
    assert r.returncode == 2
    r = agarun("--assigner", "localhost:7878", "--", "true")
    assert r.returncode == 2


def test_agarun_forwards_signals_and_exits_with_the_childs_status():
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
             "print('ready', flush=True)\n"
             "time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-m", "acb_broker.agarun", "--", sys.executable, "-c", child],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 42
    p2 = subprocess.Popen([sys.executable, "-m", "acb_broker.agarun", "--", sys.executable, "-c",
                           "import time; print('ready', flush=True); time.sleep(30)"],
                          stdout=subprocess.PIPE, text=True)
    assert p2.stdout.readline().strip() == "ready"
    p2.send_signal(signal.SIGINT)
    assert p2.wait(timeout=20) == 128 + signal.SIGINT


def test_a_profile_splits_cpu_gpu_and_waits_and_skips_torn_lines(tmp_path):
    from acb_broker import profile
    ms = 1_000_000
    marks = tmp_path / "marks.jsonl"
    lines = [
        {"t": 0 * ms, "pid": 9, "job": "j", "event": "start"},
        {"t": 500 * ms, "pid": 9, "job": "j", "event": "ask"},
        {"t": 600 * ms, "pid": 9, "job": "j", "event": "got", "gpus": 1, "memory": 80 << 30},
        {"t": 800 * ms, "pid": 9, "job": "j", "event": "end", "swappable": 8 << 30},
        {"t": 1300 * ms, "pid": 9, "job": "j", "event": "ask"},
        {"t": 1300 * ms, "pid": 9, "job": "j", "event": "got", "gpus": 1, "memory": 80 << 30},
    ]
    marks.write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"t": 14, "pid"\nnot json\n')
    [p] = profile.profiles(profile.read_marks(str(marks)), launched_ns=0, exited_ns=1500 * ms)
    # CPU 0..500, wait 500..600, GPU 600..800, CPU 800..1300, GPU 1300..exit (ended mid-phase).
    assert p.phases == [("cpu", 500 * ms), ("gpu", 200 * ms), ("cpu", 500 * ms), ("gpu", 200 * ms)]
    # The memory is the peak swappable memory at a phase end, not the lease's 80 GiB fence.
    assert p.waits == [100 * ms, 0] and p.memory == 8 << 30
    assert abs(p.cpu_share() - 1000 / 1500) < 1e-9
    helps, why = profile.verdict(p)
    assert helps and "67%" in why
    t = profile.trace([p])
    assert t["jobs"][0]["phases"] == [{"cpu": "500ms"}, {"gpu": "200ms"}, {"cpu": "500ms"}, {"gpu": "200ms"}]
    assert t["jobs"][0]["memory"] == f"{8 << 30}B"
    # A job with no swappable memory gets none in its trace (simulate reads that as 0).
    nothing = profile.JobProfile("n", 1, [("cpu", 500 * ms), ("gpu", 150 * ms)], [0])
    assert "memory" not in profile.trace([nothing])["jobs"][0]
    # Short CPU phases, or a small CPU share, get a no with the reason.
    short = profile.JobProfile("s", 1, [("cpu", 50 * ms), ("gpu", 50 * ms)] * 4, [0] * 4)
    assert profile.verdict(short) == (False, profile.verdict(short)[1]) and "short" in profile.verdict(short)[1]
    busy = profile.JobProfile("b", 1, [("cpu", 400 * ms), ("gpu", 2000 * ms)], [0])
    assert not profile.verdict(busy)[0] and "only 17%" in profile.verdict(busy)[1]


@needs_assigner
def test_agarun_profile_writes_a_trace_and_says_whether_acb_helps(tmp_path):
    out = tmp_path / "trace.json"
    r = agarun("--assigner", ASSIGNER, "--job", "prof", "--memory", "2GiB", "--profile", str(out), "--",
               sys.executable, os.path.join(PKG_ROOT, "examples", "pipeline.py"), "3", "400", "100")
    assert r.returncode == 0, r.stderr
    assert "done: 3 phases" in r.stdout
    [job] = json.loads(out.read_text())["jobs"]
    # pipeline.py keeps no swappable memory: nothing to swap, whatever --memory fenced (2 GiB).
    assert job["name"] == "prof" and "memory" not in job, job
    kinds = [next(iter(p)) for p in job["phases"]]
    assert kinds[:6] == ["cpu", "gpu"] * 3 and set(kinds[6:]) <= {"cpu"}, kinds
    lengths = [int(next(iter(p.values()))[:-2]) for p in job["phases"]]
    # Sleeps last at least as long as asked.
    assert all(n >= 100 for n in lengths[1:6:2]) and all(n >= 400 for n in lengths[0:6:2]), lengths
    assert "acb will likely help" in r.stderr, r.stderr


@needs_assigner
def test_agarun_profile_measures_the_jobs_peak_swappable_memory(tmp_path):
    # 3 MiB in the first phase, 5 MiB at the end of the second, 1 MiB at the end of the third:
    # the trace says the peak, 5 MiB, not the lease's fence (the GPU's whole 80 GiB).
    script = (
        "import acb_broker as acb\n"
        "c = acb.Client()\n"
        "sizes, held = [3 << 20, 2 << 20, 0], []\n"
        "for i, size in enumerate(sizes):\n"
        "    c.on_device_begin()\n"
        "    if size: held.append(c.alloc(size))\n"
        "    if i == 2:\n"
        "        c.free(held.pop(0)); c.free(held.pop(0)); held.append(c.alloc(1 << 20))\n"
        "    c.on_device_end()\n"
    )
    out = tmp_path / "trace.json"
    r = agarun("--assigner", ASSIGNER, "--job", "mem", "--profile", str(out), "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    [job] = json.loads(out.read_text())["jobs"]
    assert job["memory"] == f"{5 << 20}B", job


def test_agarun_profile_without_gpu_phases_writes_nothing(tmp_path):
    out = tmp_path / "trace.json"
    r = agarun("--assigner", "unix:/nonexistent/acb.sock", "--profile", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert "no GPU phase" in r.stderr and not out.exists()
    r = agarun("--profile", str(tmp_path / "no" / "dir" / "t.json"), "--", "true")
    assert r.returncode == 2 and "no directory" in r.stderr



@needs_assigner
def test_swappable_memory_from_python():
    import ctypes

    with acb.Client(assigner=ASSIGNER, job="py-mem", eager=True) as c:
        with pytest.raises(acb.NotActive):
            c.alloc(4096)
        c.on_device_begin()
        big = c.alloc("3MiB")
        small = c.alloc(100)
        with pytest.raises(ValueError):
            c.alloc(0)
        with pytest.raises(TypeError):
            c.free("here")
        ctypes.memset(big, 0x5A, 3 << 20)  # the host backend: plain memory while resident
        c.set_read_only(big)
        s = c.memory_stats()
        assert s["allocations"] == 2 and s["resident_bytes"] >= (3 << 20) + 100
        c.on_device_end()
        deadline = time.monotonic() + 10
        while c.memory_stats()["resident_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        s = c.memory_stats()
        assert s["resident_bytes"] == 0 and s["swapped_out_total"] >= (3 << 20) + 100
        c.on_device_begin()
        assert ctypes.string_at(big, 3 << 20) == b"\x5a" * (3 << 20)  # back at the same address
        c.free(small)
        with pytest.raises(acb.InvalidRequest):
            c.free(small)  # twice
        c.free(big)
        assert c.memory_stats()["allocations"] == 0
        c.on_device_end()


@pytest.mark.parametrize("script", ["swap_bandwidth.py", "overhead.py", "oversubscribe.py", "auto_two_programs.py"])
def test_the_gpu_tier_scripts_skip_cleanly_without_a_gpu(script):
    path = os.path.join(PKG_ROOT, "..", "..", "gpu-tier", script)
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=PKG_ROOT, ACB_ASSIGNER="unix:/nonexistent"))
    if "skipped" not in r.stdout:
        pytest.skip("gpu-tier/run.sh runs them here: this machine has CUDA")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("skipped (GPU tier): ") and r.stderr == "", (r.stdout, r.stderr)


@needs_assigner
def test_a_pinned_client_waits_for_the_gpu_of_its_first_grant():
    """Two GPUs: a pinned job whose GPU another job holds waits, though the other GPU is free."""
    import threading

    def holders(c):
        return {g["index"]: [h["job"] for h in g.get("holders", [])] for g in c.status()["gpus"]}

    def until(what, check):
        deadline = time.monotonic() + 10
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    with acb.Client(assigner=ASSIGNER, job="pinned", eager=True, pin_gpus=True) as pinned, \
            acb.Client(assigner=ASSIGNER, job="squat-a", eager=True) as a, \
            acb.Client(assigner=ASSIGNER, job="squat-b", eager=True) as b:
        first = pinned.on_device_begin().devices[0].index
        pinned.on_device_end()
        # (Other tests' clients may still keep a GPU under lazy release: they yield when asked.)
        until("the pinned job's release", lambda: all("pinned" not in h for h in holders(pinned).values()))
        # Two other jobs take both GPUs; the one not on the pinned job's GPU gives it back.
        leases = {a.on_device_begin().devices[0].index: a, b.on_device_begin().devices[0].index: b}
        assert sorted(leases) == [0, 1]
        other = 1 - first
        leases[other].on_device_end()
        until("the other GPU's release", lambda: holders(pinned)[other] == [])
        got = []
        waiter = threading.Thread(target=lambda: got.append(pinned.on_device_begin(timeout=30)))
        waiter.start()
        # Queued, though the other GPU is free: it waits for its own.
        until("the pinned job's request in the queue", lambda: any(q["job"] == "pinned" for q in pinned.status()["queue"]))
        time.sleep(0.3)
        assert not got and holders(pinned)[other] == []
        leases[first].on_device_end()
        waiter.join(timeout=30)
        assert got and got[0].devices[0].index == first
        pinned.on_device_end()
    with pytest.raises(TypeError):
        acb.Client(assigner=ASSIGNER, pin_gpus="yes")
