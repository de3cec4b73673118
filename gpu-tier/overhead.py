"""GPU tier: auto mode's overhead on an uncontended, GPU-bound PyTorch loop, beside plain
PyTorch in the same run (rounds alternate plain and auto; medians). Goal: at most 3% (the
white paper reports about 5%). Each job times its own loop, after a warm-up, so process
start-up is not counted.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python gpu-tier/overhead.py
"""
import argparse
import sys
import time

from common import agarun, median, run_job, torch_with_cuda, value

ROUNDS = 6  # alternating plain, auto, auto, plain, ...: drift weighs on both


def job(iters: int) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)]).cuda()
    x = torch.randn(4096, 4096, device="cuda")
    with torch.no_grad():
        for _ in range(10):
            model(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            y = model(x)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
    print(f"seconds {t1 - t0!r}")
    print(f"checksum {y.double().sum().item()!r}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", action="store_true", help="(internal) one timed loop")
    p.add_argument("--iters", type=int, default=200)
    args = p.parse_args()
    if args.job:
        job(args.iters)
        return 0
    if torch_with_cuda() is None:
        return 0
    me = [sys.executable, __file__, "--job", "--iters", str(args.iters)]
    plain, auto, sums = [], [], set()
    for i in range(ROUNDS):
        for mode in (("plain", "auto") if i % 2 == 0 else ("auto", "plain")):
            if mode == "plain":
                r = run_job(me)
                plain.append(float(value(r.stdout, "seconds")))
            else:
                r = run_job(agarun("--mode", "auto", "--job", "gpu-tier-overhead", "--", *me))
                if "without acb" in r.stderr:
                    sys.exit(f"auto mode did not turn on:\n{r.stderr}")
                auto.append(float(value(r.stdout, "seconds")))
            sums.add(value(r.stdout, "checksum"))
    p50, a50 = median(plain), median(auto)
    print(f"{args.iters} passes of 8 Linear(4096) on 4096 rows, {ROUNDS} runs each, in alternating order")
    print(f"plain PyTorch {p50 * 1e3:.1f} ms, auto mode {a50 * 1e3:.1f} ms: auto / plain = {a50 / p50:.3f} "
          f"(overhead {(a50 / p50 - 1) * 100:+.1f}%; goal at most +3%)")
    print(f"results {'identical' if len(sums) == 1 else 'DIFFER: ' + ', '.join(sorted(sums))}")
    return 0 if len(sums) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
