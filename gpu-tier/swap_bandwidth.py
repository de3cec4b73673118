"""GPU tier: libacb's swap-out and swap-in bandwidth (the CUDA VMM backend) beside a plain
pinned copy (PyTorch, cudaMemcpyAsync) in the same run, for 1, 4 and 16 GiB
(ACB_BW_GIB=1,4,16). Goal: at least 90% of the plain copy. The bytes are checked after the
last swap-in.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python gpu-tier/swap_bandwidth.py
"""
import ctypes
import os
import sys
import time

from common import assigner, median, torch_with_cuda

ROUNDS = 3


def plain(torch, n: int):
    """Median seconds of a pinned host -> device and device -> host copy of n bytes."""
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    h2d, d2h = [], []
    for r in range(ROUNDS + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        host.copy_(dev, non_blocking=True)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if r:  # the first round warms up
            h2d.append(t1 - t0)
            d2h.append(t2 - t1)
    del host, dev
    torch.cuda.empty_cache()
    return median(h2d), median(d2h)


def brokered(torch, n: int):
    """Median seconds of libacb's swap-out (from on_device_end until nothing is resident) and
    swap-in (on_device_begin, which returns once the memory is back), and the first swap-out
    (which pins the host buffers it then keeps). Each includes a release or a grant through the
    assigner: `brokered(torch, 4096)` measures that fixed part, which main() subtracts."""
    import acb_broker as acb
    import acb_broker.torch

    cuda = ctypes.CDLL("libcuda.so.1")
    outs, ins = [], []
    with acb.Client(assigner=assigner(), job="gpu-tier-bw", eager=True, memory_backend="cuda") as c:
        lease = c.on_device_begin()
        torch.cuda.set_device(acb.torch.torch_device(lease.devices[0]))  # where libacb maps it
        ptr = c.alloc(n)
        torch.cuda.synchronize()
        assert cuda.cuMemsetD8_v2(ctypes.c_uint64(ptr), ctypes.c_ubyte(0x5A), ctypes.c_size_t(n)) == 0
        assert cuda.cuCtxSynchronize() == 0
        first = None
        for r in range(ROUNDS + 1):
            t0 = time.perf_counter()
            c.on_device_end()
            while c.memory_stats()["resident_bytes"]:
                time.sleep(0.0002)
            t1 = time.perf_counter()
            c.on_device_begin()
            t2 = time.perf_counter()
            if r == 0:
                first = t1 - t0
            else:
                outs.append(t1 - t0)
                ins.append(t2 - t1)
        for offset in sorted({0, n // 2, max(n - 4096, 0)}):
            k = min(4096, n - offset)
            buf = (ctypes.c_ubyte * k)()
            assert cuda.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(ptr + offset), ctypes.c_size_t(k)) == 0
            if bytes(buf) != b"\x5a" * k:
                sys.exit(f"the bytes at {offset} did not come back")
        c.free(ptr)
        c.on_device_end()
    return median(outs), median(ins), first


def main() -> int:
    torch = torch_with_cuda()
    if torch is None:
        return 0
    sizes = [int(x) for x in os.environ.get("ACB_BW_GIB", "1,4,16").split(",")]
    print(f"GPU: {torch.cuda.get_device_name(0)}; {ROUNDS} rounds each, medians; GB/s = 1e9 bytes/s")
    print(f"{'size':>6} | {'plain D2H':>10} {'swap-out':>10} {'ratio':>6} | {'plain H2D':>10} {'swap-in':>10} "
          f"{'ratio':>6} | first swap-out (pins host memory)")
    # The fixed part of a swap (the release or grant through the assigner, the client thread's
    # wake-up), measured on 4 KiB and taken off the timings below.
    fixed_out, fixed_in, _ = brokered(torch, 4096)
    print(f"fixed part of a swap, taken off below: out {fixed_out * 1e3:.2f} ms, in {fixed_in * 1e3:.2f} ms")
    for gib in sizes:
        n = gib << 30
        h2d, d2h = plain(torch, n)
        out, into, first = brokered(torch, n)
        out, into = max(out - fixed_out, 1e-9), max(into - fixed_in, 1e-9)
        gbs = lambda s: n / s / 1e9  # noqa: E731
        print(f"{gib:>4}Gi | {gbs(d2h):>10.1f} {gbs(out):>10.1f} {d2h / out:>6.2f} | {gbs(h2d):>10.1f} "
              f"{gbs(into):>10.1f} {h2d / into:>6.2f} | {gbs(first):.1f} GB/s", flush=True)
    print("ratio: libacb's bandwidth over the plain copy's (goal: 0.90 or more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
