"""The AlphaFold2-like job with no acb in it, for auto mode: a plain PyTorch program.

    agarun --mode auto --assigner unix:/tmp/acb/assigner.sock --job fold-auto-1 -- python fold_auto.py

Under `agarun --mode auto` its CUDA memory is libacb's and its CUDA operations are gated: the
first one after each MSA search waits for a GPU (and for the job's memory, swapped back in at
the same addresses), and the GPU is given back once the job has gone `--idle-ms` without one.
It prints a checksum of its results, the same with and without acb. Without CUDA it computes
on the CPU (and auto mode says once that it runs the program without acb).
"""
import argparse
import sys
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=3, help="proteins to fold (default 3)")
    p.add_argument("--msa", type=float, default=4.9, help="seconds of MSA search per protein (default 4.9)")
    p.add_argument("--steps", type=int, default=200, help="passes of the model per protein (default 200)")
    p.add_argument("--width", type=int, default=4096, help="the model's width (default 4096)")
    args = p.parse_args()
    if args.proteins < 1 or args.msa < 0 or args.steps < 1 or args.width < 1:
        p.error("--proteins, --steps and --width must be at least 1, --msa at least 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(args.width, args.width), torch.nn.Tanh())
                                  for _ in range(4)]).to(device).eval()
    checksum = 0.0
    for i in range(args.proteins):
        time.sleep(args.msa)                      # CPU phase: no CUDA operation, the GPU goes back
        t0 = time.monotonic()
        with torch.no_grad():                     # GPU phase: the first operation waits for a GPU
            x = torch.randn(256, args.width, generator=torch.Generator().manual_seed(i)).to(device)
            for _ in range(args.steps):
                x = model(x)
            s = x.double().sum().item()
        checksum += s
        print(f"protein {i}: {args.steps} passes on {device} in {time.monotonic() - t0:.2f} s, sum {s!r}", flush=True)
    print(f"done: {args.proteins} proteins, checksum {checksum!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
