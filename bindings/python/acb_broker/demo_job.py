"""One job of `acb-assigner demo` on real GPUs (the demo starts it as `python -m acb_broker.demo_job`):
a pipeline of work items, each a CPU phase (a sleep standing in for data preparation) then a
GPU phase of real kernels (matrix multiplications, for about `--gpu`) on the granted GPU, in
PyTorch manual mode. The job's state, `--memory` bytes, lives on the GPU in GPU phases and in
pinned host memory between them (brokered) or stays on the GPU all along (static); each GPU
phase checks that it came back unchanged, then writes it anew.

It speaks the demo's line protocol on stdout (acb-assigner/src/demo/job.rs): want, got K,
gpu-start, gpu-end, item, ended, swapped OUT IN.
"""
import argparse
import sys
import time
from typing import Optional

import acb_broker as acb
import torch
from acb_broker import torch as acb_torch
from acb_broker._units import parse_duration_ns


def _seconds(text: str) -> float:
    try:
        return parse_duration_ns(text) / 1e9
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def say(line: str) -> None:
    print(line, flush=True)


class Job:
    def __init__(self, memory: int):
        self.weights = torch.randn(2048, 2048) / 45.0
        self.state = torch.zeros(max(memory, 1), dtype=torch.uint8)
        self.written: Optional[int] = None  # the value the last GPU phase wrote

    def compute(self, device: torch.device, seconds: float, phase: int) -> None:
        if self.written is not None:
            wrong = int((self.state != self.written).sum())
            if wrong:
                raise RuntimeError(f"phase {phase}: {wrong} bytes of the job's state did not come back unchanged")
        x = torch.randn(2048, 2048, device=device)
        deadline = time.monotonic() + seconds
        while True:
            x = torch.tanh(x @ self.weights)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if time.monotonic() >= deadline:
                break
        self.written = phase % 251
        self.state.fill_(self.written)

    def nbytes(self) -> int:
        return self.weights.numel() * self.weights.element_size() + self.state.numel()


def _granted_index() -> int:
    lease = acb_torch.lease()
    assert lease is not None, "inside on_device there is a lease"
    return lease.devices[0].index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m acb_broker.demo_job", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--cpu", type=_seconds, required=True)
    p.add_argument("--gpu", type=_seconds, required=True)
    p.add_argument("--memory", type=int, default=0)
    p.add_argument("--static", action="store_true", help="hold one GPU for the job's whole life")
    args = p.parse_args(argv)
    if args.items < 1 or args.gpu <= 0 or args.cpu < 0 or args.memory < 0:
        p.error("--items at least 1, --gpu more than 0, --cpu and --memory at least 0")
    job = Job(args.memory)
    swapped = 0

    def phase(device, item):
        say("gpu-start")
        job.compute(device, args.gpu, item + 1)
        say("gpu-end")

    with acb.Client() as client:
        if args.static:
            say("want")
            with acb_torch.on_device(job.weights, job.state, client=client) as device:
                say(f"got {_granted_index()}")
                for item in range(args.items):
                    time.sleep(args.cpu)
                    phase(device, item)
                    say("item")
            say("ended")
        else:
            for item in range(args.items):
                time.sleep(args.cpu)
                say("want")
                with acb_torch.on_device(job.weights, job.state, client=client) as device:
                    say(f"got {_granted_index()}")
                    phase(device, item)
                say("ended")
                say("item")
                if device.type == "cuda":  # with the CPU standing in, nothing moved
                    swapped += job.nbytes()
    # Brokered, the job's memory leaves the GPU after every phase and comes back before the next.
    say(f"swapped {swapped} {swapped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
