"""GPU tier: automatic mode's overhead on an uncontended GPU, both ways it gates, beside plain
PyTorch in the same run:

    plain       the loop alone, no acb
    interposer  `agarun --mode auto`: libacb_preload.so (the CUDA interposer) gates the driver calls
    dispatch    `agarun --mode auto` with the interposer not loaded (ACB_PRELOAD_LIBRARY names no
                file): acb.torch.enable_auto() gates through PyTorch's dispatch mode (the fallback)

on two loops: GPU-bound (8 Linear(4096) on 4096 rows per step) and launch-bound (2000 in-place
elementwise kernels on 4096 floats per step). Each job is a process that times both loops after
a warm-up (process start-up is not counted); each round runs the three paths once, in a
different order each round (drift weighs on all three); medians per step. Goal: at most +3%.
The last line is the figures as one JSON object.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python gpu-tier/overhead.py [--rounds 6]
"""
import argparse
import ctypes
import itertools
import json
import os
import sys
import time

from common import agarun, median, run_job, torch_with_cuda, value

PATHS = ("plain", "interposer", "dispatch")
LOOPS = ("gpu-bound", "launch-bound")
KERNELS = 2000  # per launch-bound step


class AutoStats(ctypes.Structure):  # acb_auto_stats (acb-ffi/src/auto.rs)
    _fields_ = [("phases", ctypes.c_uint64), ("releases", ctypes.c_uint64), ("gated_calls", ctypes.c_uint64),
                ("blocked_ns", ctypes.c_uint64), ("active", ctypes.c_uint32)]


def gate():
    """Which gate this process runs under; for the interposer, a function giving the driver
    gate's counters (from the libacb agarun preloaded)."""
    m = sys.modules.get("acb_broker.torch")  # imported by agarun's sitecustomize, never by plain jobs
    if m is None:
        return "plain", None
    if m._interposer_on:
        lib = ctypes.CDLL(os.environ["ACB_LIBRARY"])  # the same file as in LD_PRELOAD: the same library

        def stats():
            s = AutoStats()
            if lib.acb_auto_get_stats(ctypes.byref(s)) != 0:
                raise SystemExit("acb_auto_get_stats failed")
            return s
        return "interposer", stats
    return ("dispatch" if m._auto is not None else "off"), None


def timed(torch, step, warm: int, steps: int, stats):
    """Seconds per step after `warm` steps, the result's checksum, and the gated calls per step."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    g0 = stats().gated_calls if stats else 0
    t0 = time.perf_counter()
    for _ in range(steps):
        y = step()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    g1 = stats().gated_calls if stats else 0
    return (t1 - t0) / steps, repr(y.double().sum().item()), (g1 - g0) / steps


def job(iters: int, launch_iters: int) -> None:
    import torch

    path, stats = gate()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)]).cuda()
    x = torch.randn(4096, 4096, device="cuda")
    small = torch.rand(4096, device="cuda")

    def launches():
        for _ in range(KERNELS // 2):
            small.mul_(0.999).add_(0.001)
        return small

    print(f"gate {path}")
    with torch.no_grad():
        for name, step, warm, n in (("gpu-bound", lambda: model(x), 5, iters),
                                    ("launch-bound", launches, 5, launch_iters)):
            s, checksum, gated = timed(torch, step, warm, n, stats)
            print(f"{name}-seconds {s!r}")
            print(f"{name}-checksum {checksum}")
            print(f"{name}-gated {gated!r}")
    if stats:
        s = stats()
        print(f"auto active={s.active} phases={s.phases} releases={s.releases} blocked_ms={s.blocked_ns / 1e6:.1f}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", action="store_true", help="(internal) one job: both loops, timed")
    p.add_argument("--rounds", type=int, default=6, help="runs of each path (default 6)")
    p.add_argument("--iters", type=int, default=50, help="timed GPU-bound steps per job (default 50)")
    p.add_argument("--launch-iters", type=int, default=50, help="timed launch-bound steps per job (default 50)")
    args = p.parse_args()
    if args.job:
        job(args.iters, args.launch_iters)
        return 0
    torch = torch_with_cuda()
    if torch is None:
        return 0
    from acb_broker.agarun import _interposer

    if _interposer() is None:
        sys.exit("libacb_preload.so (the CUDA interposer) is not beside libacb: build it with "
                 "cargo build --release -p acb-preload and carry target/release/libacb_preload.so")
    me = [sys.executable, os.path.abspath(__file__), "--job", "--iters", str(args.iters),
          "--launch-iters", str(args.launch_iters)]
    envs = {"plain": None, "interposer": None,
            "dispatch": dict(os.environ, ACB_PRELOAD_LIBRARY="/nonexistent/libacb_preload.so")}
    orders = list(itertools.permutations(PATHS))
    secs = {(loop, path): [] for loop in LOOPS for path in PATHS}
    sums = {loop: set() for loop in LOOPS}
    gated, bad = None, []
    for i in range(args.rounds):
        for path in orders[i % len(orders)]:
            cmd = me if path == "plain" else agarun("--mode", "auto", "--job", f"gpu-tier-overhead-{path}", "--", *me)
            r = run_job(cmd, envs[path])
            got = value(r.stdout, "gate")
            if got != path or "without acb" in r.stderr or "unbrokered" in r.stderr:
                sys.exit(f"the {path} job ran with gate {got!r}, not {path!r}:\n{r.stderr}")
            for loop in LOOPS:
                secs[loop, path].append(float(value(r.stdout, f"{loop}-seconds")))
                sums[loop].add(value(r.stdout, f"{loop}-checksum"))
            if path == "interposer":
                gated = float(value(r.stdout, "launch-bound-gated"))
                if "active=1" not in r.stdout or gated < 1:
                    bad.append(f"the interposer gated {gated} calls per launch-bound step "
                               f"({value(r.stdout, 'auto')})")
    med = {k: median(v) for k, v in secs.items()}
    print(f"GPU: {torch.cuda.get_device_name(0)}; {args.rounds} rounds, each path once per round, the order "
          f"changing; GPU-bound: 8 Linear(4096) on 4096 rows, {args.iters} steps; launch-bound: {KERNELS} "
          f"in-place kernels on 4096 floats, {args.launch_iters} steps")
    print(f"{'ms per step (median)':<22}" + "".join(f"{p:>20}" for p in PATHS))
    result = {"check": "auto-overhead", "gpu": torch.cuda.get_device_name(0), "rounds": args.rounds, "loops": {}}
    for loop in LOOPS:
        base = med[loop, "plain"]
        cells = [f"{base * 1e3:.3f}"] + [f"{med[loop, p] * 1e3:.3f} ({(med[loop, p] / base - 1) * 100:+.1f}%)"
                                         for p in PATHS[1:]]
        print(f"{loop:<22}" + "".join(f"{c:>20}" for c in cells))
        result["loops"][loop] = {p: {"median_s": med[loop, p], "ratio": med[loop, p] / base,
                                     "runs_s": secs[loop, p]} for p in PATHS}
    for p in PATHS[1:]:
        worst = max(med[loop, p] / med[loop, "plain"] for loop in LOOPS)
        print(f"{p}: overhead at most {(worst - 1) * 100:+.1f}% (goal at most +3%: "
              f"{'met' if worst <= 1.03 else 'MISSED'})")
    print(f"interposer: {gated:.0f} gated driver calls per launch-bound step ({KERNELS} kernels)")
    same = all(len(s) == 1 for s in sums.values())
    print(f"results {'identical' if same else 'DIFFER: ' + repr(sums)} across the three paths")
    result.update(interposer_gated_per_launch_step=gated, results_identical=same, problems=bad)
    for b in bad:
        print(f"PROBLEM: {b}")
    print(json.dumps(result))
    return 0 if same and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
