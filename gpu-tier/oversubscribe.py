"""GPU tier: oversubscription. N processes (default 4) each holding G GiB (default 30) on one
GPU in auto mode, more than the GPU has, all at once; beside the same jobs run one at a time
without acb. Every job's result must be identical both ways.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python gpu-tier/oversubscribe.py [--jobs 4] [--gib 30]
"""
import argparse
import os
import subprocess
import sys
import time

from common import agarun, run_job, torch_with_cuda, value


def job(gib: int, phases: int, cpu: float, seed: int) -> None:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    # 1 GiB tensors of float32: the job's state, on the GPU in every GPU phase.
    state = [torch.rand(1 << 28, device="cuda", generator=g) for _ in range(gib)]
    for _ in range(phases):
        time.sleep(cpu)  # CPU phase: no CUDA operation; auto mode gives the GPU back
        for t in state:  # GPU phase
            t.mul_(0.999).add_(0.001)
    print(f"checksum {sum(t.double().sum().item() for t in state)!r}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", action="store_true", help="(internal) one job")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--gib", type=int, default=30)
    p.add_argument("--phases", type=int, default=3)
    p.add_argument("--cpu", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.job:
        job(args.gib, args.phases, args.cpu, args.seed)
        return 0
    torch = torch_with_cuda()
    if torch is None:
        return 0
    total = torch.cuda.get_device_properties(0).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # While one job holds the GPU, the others' memory is in pinned host memory.
    pinned = (args.jobs - 1) * (args.gib << 30)
    if pinned > 0.8 * ram:
        sys.exit(f"{args.jobs - 1} swapped-out jobs of {args.gib} GiB need {pinned / 2**30:.0f} GiB of pinned host "
                 f"memory, more than 80% of this machine's {ram / 2**30:.0f} GiB: use fewer --jobs or less --gib")
    if args.jobs * (args.gib << 30) <= total:
        print(f"note: {args.jobs} x {args.gib} GiB fits the GPU's {total / 2**30:.0f} GiB: this is not oversubscription")
    print(f"GPU: {torch.cuda.get_device_name(0)}, {total / 2**30:.0f} GiB; {args.jobs} jobs of {args.gib} GiB "
          f"({args.jobs * args.gib} GiB in all), {args.phases} phases each of {args.cpu} s CPU then a GPU pass")

    def cmd(i):
        return [sys.executable, __file__, "--job", "--gib", str(args.gib), "--phases", str(args.phases),
                "--cpu", str(args.cpu), "--seed", str(i)]

    t0 = time.monotonic()
    plain = []
    for i in range(args.jobs):
        plain.append(value(run_job(cmd(i)).stdout, "checksum"))
    t_plain = time.monotonic() - t0
    t0 = time.monotonic()
    procs = [subprocess.Popen(agarun("--mode", "auto", "--idle-ms", "200", "--job", f"oversub-{i}", "--", *cmd(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(args.jobs)]
    auto = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"auto-mode job {i} failed ({proc.returncode}):\n{err}")
        if "without acb" in err:
            sys.exit(f"auto mode did not turn on in job {i}:\n{err}")
        auto.append(value(out, "checksum"))
    t_auto = time.monotonic() - t0
    same = plain == auto
    print(f"one at a time without acb: {t_plain:.1f} s; all at once in auto mode: {t_auto:.1f} s "
          f"({t_plain / t_auto:.2f}x)")
    print(f"results {'identical' if same else 'DIFFER'}: {', '.join(auto)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
