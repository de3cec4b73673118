"""Times N begin+end cycles through the acb package (eager release). Prints p50_us/mean_us
for the benchmark driver (cargo run --release -p libacb-tests --example roundtrip_bench)."""
import statistics
import sys
import time

import acb_broker as acb

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
with acb.Client(eager=True) as c:
    c.on_device_begin()
    c.on_device_end()  # warm-up: connects the session
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.on_device_begin()
        c.on_device_end()
        lat.append((time.perf_counter() - t0) * 1e6)
print(f"p50_us={statistics.median(lat):.2f} mean_us={statistics.fmean(lat):.2f}")
