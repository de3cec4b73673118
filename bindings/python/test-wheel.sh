#!/usr/bin/env bash
# Installs a binary wheel (build-wheel.sh) into a fresh virtual environment, with no Rust and
# no network, and runs the whole system from it: the bundled acb-assigner on simulated GPUs
# (started by gpu_assigner, as Fujitsu ACB users type it), two brokered Python jobs through
# the bundled libacb, status, stop. Nothing from the source tree is on the path.
#   bindings/python/test-wheel.sh WHEEL
set -euo pipefail
wheel=$(realpath "$1")
work=$(mktemp -d)
venv=$work/venv
cleanup() {
  [[ -x $venv/bin/gpu_assigner ]] && ACB_GPU_ASSIGNER_DIR=$work/run "$venv/bin/gpu_assigner" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"
cd "$work"   # away from the source tree
# No Rust needed, and nothing of the checkout used: PATH without cargo's bin, ACB_* unset.
env -i HOME="$HOME" PATH=/usr/bin:/bin ACB_GPU_ASSIGNER_DIR="$work/run" bash -euo pipefail -c '
  venv=$1 work=$2
  "$venv/bin/acb-assigner" --version
  "$venv/bin/python" -c "import acb_broker as acb, os; p = acb._ffi.LIBRARY_PATH; assert p.startswith(os.path.realpath(\"$venv\")), p; print(\"libacb\", p)"
  # The CUDA interposer ships in the wheel, where agarun --mode auto finds it.
  "$venv/bin/python" -c "from acb_broker import agarun; i = agarun._interposer(); assert i and i[0].endswith(\"libacb_preload.so\"), i; print(\"interposer\", i[0])"
  test -f "$venv"/lib/python3*/site-packages/acb_broker/py.typed
  # Exactly one libacb, the one built for the wheel.
  libs=$(ls "$venv"/lib/python3*/site-packages/acb_broker/ | grep -c "^_libacb")
  test "$libs" -eq 1 || { ls "$venv"/lib/python3*/site-packages/acb_broker/; echo "the wheel carries $libs libacb files"; exit 1; }
  port=$("$venv/bin/python" -c "import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])")
  "$venv/bin/gpu_assigner" --address 127.0.0.1 --port "$port" --gpus fake:1x8GiB start
  # The jobs find it as Fujitsu ACB jobs do.
  export AGA_GPU_ALLOC_SERVER_ADDRESS=127.0.0.1 AGA_GPU_ALLOC_SERVER_PORT=$port
  job="import acb_broker as acb, time
with acb.Client() as c:
    for _ in range(3):
        with c.on_device():
            time.sleep(0.05)
        time.sleep(0.05)
print(\"job done\")"
  "$venv/bin/agarun" --job a -- "$venv/bin/python" -c "$job" &
  "$venv/bin/agarun" --job b -- "$venv/bin/python" -c "$job"
  wait
  "$venv/bin/gpu_assigner" status
  "$venv/bin/gpu_assigner" stop
' _ "$venv" "$work"
echo "wheel test passed: $(basename "$wheel")"
