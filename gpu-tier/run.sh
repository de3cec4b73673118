#!/usr/bin/env bash
# The GPU tier, on a machine with an NVIDIA GPU, its driver and PyTorch with CUDA. It needs the
# release build of this tree (target/release/acb-assigner and libacb.so, and, for the Rust GPU
# test, the acb-ffi test binary from `cargo test --release -p acb-ffi --lib --no-run`), built
# elsewhere if this machine has no Rust. It prints every figure; the closing note copies them.
set -euo pipefail
cd "$(dirname "$0")/.."
export ACB_LIBRARY=$PWD/target/release/libacb.so PYTHONPATH=$PWD/bindings/python:${PYTHONPATH:-}
python=${PYTHON:-python3}
tmp=$(mktemp -d)
target/release/acb-assigner serve --listen "unix:$tmp/acb.sock" --gpus auto --scheduler simple >"$tmp/assigner.log" 2>&1 &
assigner=$!
trap 'kill $assigner 2>/dev/null; wait $assigner 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -S "$tmp/acb.sock" ] && break; sleep 0.1; done
export ACB_ASSIGNER=unix:$tmp/acb.sock
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== libacb's CUDA backend: swaps byte-exact (Rust test)"
test_bin=$(ls -t target/release/deps/acb-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
if [ -n "$test_bin" ]; then "$test_bin" memory::cuda --nocapture; else echo "(no acb-ffi test binary carried)"; fi

echo "== swap bandwidth beside a plain pinned copy"
"$python" gpu-tier/swap_bandwidth.py
echo "== auto mode's overhead on a GPU-bound loop"
"$python" gpu-tier/overhead.py
echo "== oversubscription: 4 x 30 GiB in auto mode"
"$python" gpu-tier/oversubscribe.py "$@"
echo "== throughput: 8 jobs, 70% CPU / 30% GPU, static (1 per GPU at a time) vs brokered"
target/release/acb-assigner demo --device real --jobs 8 --items 6 --cpu 1400ms --gpu 600ms --out-dir "$tmp/demo"
