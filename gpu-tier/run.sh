#!/usr/bin/env bash
# The GPU tier, on a machine with an NVIDIA GPU, its driver and PyTorch with CUDA. It needs the
# release build of this tree (target/release/acb-assigner, libacb.so and libacb_preload.so, and, for
# the Rust GPU test, the acb-client test binary from `cargo test --release -p acb-client --lib --no-run`), built
# elsewhere if this machine has no Rust. It runs every check, even after one fails, prints
# every figure, and exits 1 if any check failed. Timelines go to $ACB_GPU_TIER_OUT (default
# gpu-tier-out/). ACB_GPU_TIER_GPUS=fake:1x80GiB makes a dry run of the script on a machine without one.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export ACB_LIBRARY=$PWD/target/release/libacb.so PYTHONPATH=$PWD/bindings/python:${PYTHONPATH:-}
export ACB_PYTHON=${PYTHON:-python3}   # the demo's jobs use the same interpreter
python=$ACB_PYTHON
out=${ACB_GPU_TIER_OUT:-$PWD/gpu-tier-out}
mkdir -p "$out"
for f in target/release/acb-assigner "$ACB_LIBRARY" target/release/libacb_preload.so; do
  [ -f "$f" ] || { echo "run.sh: $f is missing: build it with cargo build --release -p acb-assigner -p acb-ffi -p acb-preload"; exit 2; }
done
tmp=$(mktemp -d)
target/release/acb-assigner serve --listen "unix:$tmp/acb.sock" --gpus "${ACB_GPU_TIER_GPUS:-auto}" --scheduler simple >"$out/assigner.log" 2>&1 &
assigner=$!
trap 'kill $assigner 2>/dev/null; wait $assigner 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  [ -S "$tmp/acb.sock" ] && break
  kill -0 $assigner 2>/dev/null || { echo "run.sh: the assigner did not start:"; cat "$out/assigner.log"; exit 1; }
  sleep 0.1
done
[ -S "$tmp/acb.sock" ] || { echo "run.sh: the assigner's socket did not appear:"; cat "$out/assigner.log"; exit 1; }
export ACB_ASSIGNER=unix:$tmp/acb.sock
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
failed=()
check() {  # check NAME COMMAND...: runs one check, remembers a failure, goes on
  local name=$1
  shift
  echo; echo "== $name"
  "$@" || failed+=("$name (exit $?)")
}

# The acb-client unit-test binary that has the CUDA test (others, from older builds, may lie there).
test_bin=""
# shellcheck disable=SC2045  # ls -t: the newest first (cargo names have no spaces)
for b in $(ls -t target/release/deps/acb_client-* 2>/dev/null); do
  if [ -x "$b" ] && [ -f "$b" ] && "$b" --list 2>/dev/null | grep -q gpu_memory_swaps_out_and_back_exact; then test_bin=$b; break; fi
done
if [ -n "$test_bin" ]; then
  check "libacb's CUDA backend: swaps byte-exact (Rust test $test_bin)" "$test_bin" memory::cuda --nocapture
else
  echo "== (no acb-client test binary with the CUDA test was carried: cargo test --release -p acb-client --lib --no-run)"
fi
check "swap bandwidth beside a plain pinned copy" "$python" gpu-tier/swap_bandwidth.py
check "auto mode's overhead, interposer and dispatch mode, GPU-bound and launch-bound loops" "$python" gpu-tier/overhead.py
check "two programs with no acb code sharing one GPU in auto mode" "$python" gpu-tier/auto_two_programs.py
check "oversubscription in auto mode" "$python" gpu-tier/oversubscribe.py "$@"
check "throughput: 8 jobs, 70% CPU / 30% GPU, static (1 per GPU at a time) vs brokered" \
  target/release/acb-assigner demo --device real --jobs 8 --items 6 --cpu 1400ms --gpu 600ms --out-dir "$out/demo"
echo
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "every check ran"
