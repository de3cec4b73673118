#!/usr/bin/env bash
# Fuzzes one target for SECONDS with libFuzzer (cargo-fuzz), on the stable toolchain:
#   fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
# TARGET: requests, trace, settings, c_abi or authority. Needs `cargo install cargo-fuzz`.
# Inputs it finds go to fuzz/corpus-full/TARGET (not committed); the committed corpus
# (fuzz/corpus/TARGET) is read, never written. A crash is saved in fuzz/artifacts/TARGET and
# makes the script exit non-zero. Minimise into the committed corpus afterwards with:
#   RUSTC_BOOTSTRAP=1 cargo fuzz cmin -s none --target-dir ../target/fuzz TARGET corpus-full/TARGET
# (see the README's "Fuzzing" section for the whole procedure).
# SANITIZER=address|none (default: address for c_abi, whose unsafe code copies into C buffers;
# none for the pure-Rust parsers, which saves a heavy build). Builds go to the repository's
# target/fuzz (or $CARGO_TARGET_DIR/fuzz).
set -euo pipefail
cd "$(dirname "$0")"
target_dir=${CARGO_TARGET_DIR:-$PWD/../target}/fuzz

usage() { echo "usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]; TARGET: requests, trace, settings, c_abi, authority" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
target=$1 seconds=$2
shift 2
case $target in requests | trace | settings | c_abi | authority) ;; *) usage ;; esac
[[ $seconds =~ ^[1-9][0-9]*$ ]] || usage
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2; exit 2; }

if [[ $target == c_abi ]]; then default_sanitizer=address; else default_sanitizer=none; fi
sanitizer=${SANITIZER:-$default_sanitizer}
# cargo-fuzz passes -Z flags to rustc; the stable toolchain takes them under RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
mkdir -p "corpus-full/$target" "corpus/$target"
# -timeout: an input that runs 10 s is a hang, reported as a crash. -rss_limit_mb: 2 GiB.
exec cargo fuzz run -s "$sanitizer" --target-dir "$target_dir" "$target" "corpus-full/$target" "corpus/$target" -- \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
