"""An AlphaFold2-like job in manual mode: per protein, a long CPU phase (MSA and template
search) without a GPU, then a GPU phase (structure inference) with one.

    agarun --assigner unix:/tmp/acb.sock --job fold-1 -- python fold.py [--proteins N] [--msa S] [--fold S]

The MSA search is a sleep standing in for jackhmmer/HHblits. The GPU phase runs real matrix
multiplications on the granted GPU when PyTorch with CUDA is installed; otherwise it is a sleep,
and the job says the GPU phase is SIMULATED.
"""
import argparse
import sys
import time

import acb


def fold_on_gpu(device_index: int, seconds: float) -> str:
    """Keeps the granted GPU computing for about `seconds`: real kernels when torch has CUDA."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        time.sleep(seconds)
        return "SIMULATED GPU phase (no PyTorch with CUDA)"
    device = torch.device("cuda", device_index)
    a = torch.randn(4096, 4096, device=device)
    deadline = time.monotonic() + seconds
    steps = 0
    while time.monotonic() < deadline:
        a = torch.tanh(a @ a / 64.0)
        torch.cuda.synchronize(device)
        steps += 1
    return f"{steps} matmuls on cuda:{device_index}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=3, help="proteins to fold (default 3)")
    p.add_argument("--msa", type=float, default=4.9, help="seconds of MSA search per protein (default 4.9)")
    p.add_argument("--fold", type=float, default=1.1, help="seconds of GPU inference per protein (default 1.1)")
    args = p.parse_args()
    if args.proteins < 1 or args.msa < 0 or args.fold <= 0:
        p.error("--proteins must be at least 1, --msa at least 0, --fold more than 0")
    for i in range(args.proteins):
        time.sleep(args.msa)                      # CPU phase: MSA and template search, no GPU held
        with acb.on_device() as lease:            # GPU phase: ask acb for a GPU, give it back after
            how = fold_on_gpu(lease.devices[0].index, args.fold)
        print(f"protein {i}: folded on GPU {lease.devices[0].index} ({how})", flush=True)
    print(f"done: {args.proteins} proteins", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
