"""Groups (gangs across processes) from Python: the Client's parameters, the environment libacb
reads (ACB_GROUP, ACB_GROUP_SIZE, torchrun's and Slurm's), and what the assigner sees. Run by
tests/libacb/tests/python.rs with the other package tests (ACB_TEST_ASSIGNER: two simulated GPUs,
the simple scheduler). The 2-rank torchrun job is tests/python/ddp_group.py."""
import os
import threading
import time

import pytest

import acb_broker as acb

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")

LAUNCHER_VARS = ["ACB_GROUP", "ACB_GROUP_SIZE", "ACB_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                 "MASTER_PORT", "WORLD_SIZE", "RANK", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS",
                 "SLURM_PROCID"]


@pytest.fixture
def clean_env(monkeypatch):
    """No group variable from the machine running the tests (a Slurm step, say)."""
    for v in LAUNCHER_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_bad_group_parameters_raise_before_reaching_c(clean_env):
    with pytest.raises(TypeError, match="group must be a str"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group=5)
    with pytest.raises(TypeError, match="group_size must be an int"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group="g", group_size="2")
    with pytest.raises(ValueError, match="needs its group_size"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group="g")
    with pytest.raises(ValueError, match="needs a group"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group_size=2)
    for size in (0, 4097):
        with pytest.raises(ValueError, match="between 1 and 4096"):
            acb.Client(assigner="unix:/nonexistent/acb.sock", group="g", group_size=size)
    # What only libacb checks comes back as InvalidRequest (a ValueError), naming the rule.
    with pytest.raises(acb.InvalidRequest, match="control characters"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group="a\nb", group_size=2)
    with pytest.raises(acb.InvalidRequest, match="at most 256 bytes"):
        acb.Client(assigner="unix:/nonexistent/acb.sock", group="g" * 300, group_size=2)
    # Named, and none.
    acb.Client(assigner="unix:/nonexistent/acb.sock", group="g", group_size=4096).close()
    acb.Client(assigner="unix:/nonexistent/acb.sock", group="").close()


@pytest.mark.parametrize("env,var", [
    ({"ACB_GROUP": "g", "ACB_GROUP_SIZE": "0"}, "ACB_GROUP_SIZE"),
    ({"ACB_GROUP": "g", "ACB_GROUP_SIZE": "many"}, "ACB_GROUP_SIZE"),
    ({"ACB_GROUP": "g"}, "ACB_GROUP_SIZE"),
    ({"ACB_GROUP_SIZE": "2"}, "ACB_GROUP_SIZE"),
    ({"TORCHELASTIC_RUN_ID": "r", "WORLD_SIZE": "5000"}, "WORLD_SIZE"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "x"}, "SLURM_NTASKS"),
])
def test_bad_group_variables_are_named(clean_env, env, var):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(acb.InvalidRequest, match=var):
        acb.Client(assigner="unix:/nonexistent/acb.sock")


def _holder_jobs(client):
    return {h["job"] for g in client.status()["gpus"] for h in g.get("holders", [])}


@needs_assigner
def test_torchruns_environment_names_the_group_and_the_job(clean_env):
    clean_env.setenv("TORCHELASTIC_RUN_ID", "py-run")
    clean_env.setenv("MASTER_ADDR", "10.9.8.7")
    clean_env.setenv("MASTER_PORT", "29500")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    # A gang of one, so that it is granted without the other rank.
    clean_env.setenv("ACB_GROUP_SIZE", "1")
    with acb.Client(assigner=ASSIGNER) as c, c.on_device(timeout=30):
        assert "torchrun:py-run@10.9.8.7:29500-rank1" in _holder_jobs(c)


@needs_assigner
def test_a_waiting_members_request_names_its_group(clean_env):
    """Both GPUs held: the member's request waits, and the assigner's queue shows its group."""
    a = acb.Client(assigner=ASSIGNER, job="group-holder-a")
    b = acb.Client(assigner=ASSIGNER, job="group-holder-b")
    member = acb.Client(assigner=ASSIGNER, job="group-member", group="py-gang", group_size=1)
    got = {}
    try:
        a.on_device_begin(timeout=30)
        b.on_device_begin(timeout=30)

        def wait():
            try:
                got["lease"] = member.on_device_begin(timeout=30)
            except BaseException as e:  # noqa: BLE001 - reported below
                got["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        queued = []
        deadline = time.monotonic() + 10
        while not queued and time.monotonic() < deadline:
            queued = [q for q in a.status()["queue"] if q["job"] == "group-member"]
            time.sleep(0.02)
        assert queued and queued[0]["group"] == "py-gang", queued
        a.on_device_end()  # someone waits: the kept GPU goes to the member
        t.join(40)
        assert "lease" in got, got
        member.on_device_end()
        b.on_device_end()
    finally:
        for c in (member, a, b):
            c.close()
