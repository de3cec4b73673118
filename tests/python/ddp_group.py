"""A 2-rank DistributedDataParallel job (gloo, the CPU standing in for the GPUs) under torchrun,
each step's compute inside `acb.torch.on_device` (manual mode), against a real assigner started
here (`acb-assigner serve --gpus fake:2x16GiB --scheduler gpu-affinity`): its final parameters
must equal, bit for bit, those of the same job run without acb; and the assigner's event record
must show that both ranks' requests named the job's group (`torchrun:...`), with no ACB_GROUP
set: libacb reads torchrun's environment.

    python tests/python/ddp_group.py            # an interpreter with torch (ACB_TEST_PYTHON in cargo test)

ACB_ASSIGNER_BIN and ACB_LIBRARY name the assigner binary and libacb (default: target/debug/).
Without torch (or without torch.distributed's gloo) it prints "SKIPPED: ..." and exits 0.
Run by tests/libacb/tests/ddp_group.rs. Worker mode (`--worker`) is what torchrun starts.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STEPS = 5
# Every process of the test runs single-threaded, so that both runs compute in the same order.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Variables of an outer launcher that would change the group libacb derives.
LAUNCHER_VARS = ["ACB_GROUP", "ACB_GROUP_SIZE", "ACB_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                 "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_STEP_ID",
                 "SLURM_NTASKS", "SLURM_PROCID", "ACB_ASSIGNER", "ACB_EAGER_RELEASE"]


# ---------------------------------------------------------------------------------------------
# The worker: one rank of the job.


def worker(mode: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every rank, in both runs
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    batches = [(torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)) for _ in range(STEPS)]

    leases = []

    def step(x, y, device):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x.to(device)), y.to(device))
        loss.backward()  # the gradients' all-reduce (gloo) runs here, with the other rank
        opt.step()

    if mode == "acb":
        import acb_broker as acb
        import acb_broker.torch  # noqa: F401 - acb.torch

        for x, y in batches:
            with acb.torch.on_device(ddp, opt) as device:
                lease = acb.torch.lease()
                leases.append({"id": lease.id, "gpus": [d.uuid for d in lease.devices]})
                step(x, y, device)
    else:
        for x, y in batches:
            step(x, y, torch.device("cpu"))

    # Every rank's phases end before any rank exits: a member that goes away ends the group.
    dist.barrier()
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(params, os.path.join(out_dir, f"{mode}-rank{rank}.pt"))
    with open(os.path.join(out_dir, f"{mode}-rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "leases": leases, "job": os.environ.get("ACB_JOB_ID"),
                   "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
                   "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}, f)
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The test: the assigner, the two runs, the comparisons.


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def skip_reason():
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return "torch is not installed"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch has no gloo backend (torch.distributed)"
    return None


def torchrun(mode: str, out_dir: str, env: dict, timeout: float) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           os.path.abspath(__file__), "--worker", mode, "--out", out_dir]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"torchrun ({mode}) did not finish in {timeout:.0f} s:\n{e.stdout}\n{e.stderr}") from None
    check(r.returncode == 0, f"torchrun ({mode}) failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def same_bits(a, b) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return torch.equal(view(a), view(b))


def events(assigner_bin: str, addr: str) -> list:
    """The assigner's recorded history (`watch --replay --json`, which then follows live: stopped
    after a few seconds)."""
    p = subprocess.Popen([assigner_bin, "watch", "--replay", "--json", "--assigner", addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    check(lines, f"watch --replay printed no event: {err}")
    return lines


def run_test(args) -> None:
    import torch

    assigner_bin = os.environ.get("ACB_ASSIGNER_BIN") or os.path.join(ROOT, "target", "debug", "acb-assigner")
    library = os.environ.get("ACB_LIBRARY") or os.path.join(ROOT, "target", "debug", "libacb.so")
    for what, path in (("ACB_ASSIGNER_BIN", assigner_bin), ("ACB_LIBRARY", library)):
        check(os.path.exists(path), f"{path} does not exist: build it (cargo build -p acb-assigner -p acb-ffi) "
                                    f"or set {what}")
    tmp = tempfile.mkdtemp(prefix="acb-ddp-")
    sock = os.path.join(tmp, "acb.sock")
    addr = f"unix:{sock}"
    log = open(os.path.join(tmp, "assigner.log"), "w")
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    base.update(THREADS)
    # A timeout around the daemon too, so that nothing outlives a test killed midway.
    assigner = subprocess.Popen(
        ["timeout", str(int(args.timeout) + 60), assigner_bin, "serve", "--listen", addr,
         "--gpus", "fake:2x16GiB", "--scheduler", "gpu-affinity", "--state-dir", "none"],
        stdout=log, stderr=subprocess.STDOUT, env=base)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            check(assigner.poll() is None, f"the assigner exited ({assigner.returncode}): see {log.name}")
            check(time.monotonic() < deadline, "the assigner did not listen within 30 s")
            time.sleep(0.05)

        torchrun("plain", tmp, base, args.timeout / 2)
        env = dict(base, ACB_ASSIGNER=addr, ACB_LIBRARY=library, ACB_TORCH_DEVICE="cpu",
                   PYTHONPATH=os.pathsep.join(p for p in (os.path.join(ROOT, "bindings", "python"),
                                                          base.get("PYTHONPATH")) if p))
        torchrun("acb", tmp, env, args.timeout / 2)

        # 1. The same parameters, bit for bit, on every rank of both runs.
        plain = [torch.load(os.path.join(tmp, f"plain-rank{r}.pt")) for r in range(2)]
        brokered = [torch.load(os.path.join(tmp, f"acb-rank{r}.pt")) for r in range(2)]
        for name, ref in plain[0].items():
            for label, params in (("plain rank 1", plain[1]), ("acb rank 0", brokered[0]),
                                  ("acb rank 1", brokered[1])):
                check(same_bits(ref, params[name]), f"{name}: {label} differs from plain rank 0")
        print(f"ok: {len(plain[0])} tensors equal bit for bit with and without acb, on both ranks")

        # 2. Each step of each rank ran in a GPU phase; the ranks had a GPU each.
        infos = [json.load(open(os.path.join(tmp, f"acb-rank{r}.json"))) for r in range(2)]
        for info in infos:
            check(len(info["leases"]) == STEPS, f"rank {info['rank']}: {len(info['leases'])} phases, not {STEPS}")
            check(all(len(l["gpus"]) == 1 and l["gpus"][0].startswith("fake-") for l in info["leases"]), str(info))
        gpus = [{g for l in info["leases"] for g in l["gpus"]} for info in infos]
        check(not (gpus[0] & gpus[1]), f"the ranks shared a GPU: {gpus}")
        print(f"ok: {STEPS} phases per rank, on GPUs {sorted(gpus[0])} and {sorted(gpus[1])}")

        # 3. The group: libacb named each rank <group>-rank<RANK> (no ACB_JOB_ID), from
        # torchrun's environment, and the assigner's record says the requests named it.
        record = events(assigner_bin, addr)
        run_id = infos[0]["run_id"]
        want = f"torchrun:{run_id}@{infos[0]['master']}" if run_id and run_id != "none" else None
        requested = {}
        for e in record:
            if e.get("event") == "requested" and "-rank" in e.get("job", ""):
                job = e["job"]
                requested.setdefault(job[job.rindex("-rank") + 5:], []).append(e)
        check(sorted(requested) == ["0", "1"], f"no request of both ranks in the record: {record}")
        groups = set()
        for rank, reqs in requested.items():
            for e in reqs:
                check(e["job"].startswith("torchrun:"), f"rank {rank}'s job is not named by its group: {e}")
                groups.add(e["job"][: e["job"].rindex("-rank")])
        check(len(groups) == 1, f"the ranks' jobs name different groups: {groups}")
        group = groups.pop()
        check(want is None or group.startswith(want), f"group {group!r}, expected {want!r}")
        print(f"ok: both ranks are members of {group} (their jobs are {group}-rank0 and -rank1)")
        for rank, reqs in sorted(requested.items()):
            for e in reqs:
                check("group" in e, "the assigner's record does not say which group a request named "
                                    f"(no 'group' in its requested event): {e}")
                check(e["group"] == group, f"rank {rank}'s request named group {e['group']!r}, not {group!r}")
        print(f"ok: the assigner's record shows both ranks' requests naming {group}")
    except BaseException:
        log.flush()
        with open(log.name) as f:
            sys.stderr.write(f"--- assigner log ({log.name})\n{f.read()[-4000:]}\n")
        raise
    finally:
        assigner.terminate()
        try:
            assigner.wait(10)
        except subprocess.TimeoutExpired:
            assigner.kill()
        log.close()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["plain", "acb"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=300, help="seconds for both torchrun runs (default 300)")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.out)
        return 0
    reason = skip_reason()
    if reason:
        print(f"SKIPPED: {reason}")
        return 0
    try:
        run_test(args)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("PASSED: a 2-rank gloo DDP job under torchrun, brokered by acb as one group")
    return 0


if __name__ == "__main__":
    sys.exit(main())
