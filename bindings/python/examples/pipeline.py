"""A pipeline job in Python, manual mode: CPU phases without a GPU, GPU phases with one.

    ACB_ASSIGNER=unix:/tmp/acb/assigner.sock python pipeline.py [PHASES] [CPU_MS] [GPU_MS]
    agarun --assigner unix:/tmp/acb/assigner.sock -- python pipeline.py

The phases are sleeps so that it runs anywhere; a real job puts its work there.
"""
import sys
import time

import acb_broker as acb


def main() -> int:
    phases = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cpu_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    gpu_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    for i in range(phases):
        time.sleep(cpu_ms / 1000)  # CPU phase: no GPU held
        with acb.on_device() as lease:
            print(f"phase {i}: lease {lease.id} on GPU {lease.devices[0].index}", flush=True)
            time.sleep(gpu_ms / 1000)  # GPU phase: kernels would run here
    print(f"done: {phases} phases", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
