"""An AlphaFold2-like job in manual mode: per protein, a long CPU phase (MSA and template
search) without a GPU, then a GPU phase (structure inference) with one.

    agarun --assigner unix:/tmp/acb/assigner.sock --job fold-1 -- python fold.py [--proteins N] [--msa S] [--fold S]

The MSA search is a sleep standing in for jackhmmer/HHblits. When PyTorch with CUDA is
installed, the GPU phase runs a real model on the granted GPU: `acb.torch.on_device(model)`
moves the model's weights onto it for the phase and back to pinned host memory after, so the
GPU holds nothing of this job between phases. Otherwise the GPU phase is a sleep, and the job
says it is SIMULATED.
"""
import argparse
import sys
import time

import acb_broker as acb


def _torch_with_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def fold_on_gpu(torch, model, device, seconds: float) -> str:
    """Keeps the granted GPU computing for about `seconds`: the model, over and over."""
    x = torch.randn(1024, 4096, device=device)
    deadline = time.monotonic() + seconds
    steps = 0
    while time.monotonic() < deadline:
        x = model(x)
        torch.cuda.synchronize(device)
        steps += 1
    return f"{steps} passes of the model on {device}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proteins", type=int, default=3, help="proteins to fold (default 3)")
    p.add_argument("--msa", type=float, default=4.9, help="seconds of MSA search per protein (default 4.9)")
    p.add_argument("--fold", type=float, default=1.1, help="seconds of GPU inference per protein (default 1.1)")
    args = p.parse_args()
    if args.proteins < 1 or args.msa < 0 or args.fold <= 0:
        p.error("--proteins must be at least 1, --msa at least 0, --fold more than 0")
    torch = _torch_with_cuda()
    if torch is not None:
        from acb_broker import torch as acb_torch

        model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.Tanh())
                                      for _ in range(8)]).eval()
    for i in range(args.proteins):
        time.sleep(args.msa)                      # CPU phase: MSA and template search, no GPU held
        if torch is not None:                     # GPU phase: ask acb for a GPU, give it back after
            with torch.no_grad(), acb_torch.on_device(model) as device:
                how = fold_on_gpu(torch, model, device, args.fold)
            where = device
        else:
            with acb.on_device() as lease:
                time.sleep(args.fold)
                how = "SIMULATED GPU phase (no PyTorch with CUDA)"
            where = lease.devices[0].index
        print(f"protein {i}: folded on GPU {where} ({how})", flush=True)
    print(f"done: {args.proteins} proteins", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
