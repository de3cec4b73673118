#!/usr/bin/env bash
# Builds the two images from built binaries:
#   acb-assigner:TAG  the daemon (assigner.Dockerfile): FROM scratch, uid 10001
#   acb-client:TAG    a base for job images (client.Dockerfile): libacb, acb_broker, agarun
#
#   deploy/docker/build.sh [--bin-dir DIR] [--tag TAG] [--base IMAGE] [--assigner-base IMAGE]
#                          [--wheel FILE] [--only assigner|client]
#
# --bin-dir DIR     where acb-assigner and libacb.so are (default target/release:
#                   cargo build --release -p acb-assigner -p acb-ffi). target/debug works too.
# --tag TAG         the images' tag (default latest).
# --base IMAGE      the client image's base (default debian:bookworm-slim; any Debian-like
#                   image with glibc >= 2.34; without Python 3 it is installed with apt).
# --assigner-base IMAGE  the daemon's base (default scratch, with this host's glibc copied in;
#                   else an image with glibc >= 2.34 of its own, e.g. debian:bookworm-slim).
# --wheel FILE      the binary wheel to install in the client image (default: one made here
#                   from --bin-dir, as build-wheel.sh does but without auditwheel, in a copy of
#                   bindings/python: the source tree is not touched).
# --only assigner|client   build one of the two.
# The docker command is $DOCKER (default docker); DOCKER_HOST picks the daemon as usual.
# DOCKER_BUILD_ARGS adds flags to both `docker build`s (e.g. "--network none").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin_dir=$root/target/release tag=latest base=debian:bookworm-slim assigner_base=scratch wheel='' only=''
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$(realpath "$2"); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --assigner-base) assigner_base=$2; shift 2 ;;
    --wheel) wheel=$(realpath "$2"); shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
read -r -a docker <<<"${DOCKER:-docker}"
read -r -a build_args <<<"${DOCKER_BUILD_ARGS:-}"
for f in acb-assigner libacb.so; do
  [[ -f $bin_dir/$f ]] || { echo "build.sh: no $f in $bin_dir (cargo build --release -p acb-assigner -p acb-ffi)" >&2; exit 1; }
done
ctx=$(mktemp -d "${TMPDIR:-/tmp}/acb-docker-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

if [[ $only != client ]]; then
  # The daemon's context: rootfs/ (binary, and on scratch the libraries ldd names, at the
  # paths this host has them, an ld.so.cache, and passwd/group entries for uid 10001).
  a=$ctx/assigner
  mkdir -p "$a/rootfs/usr/local/bin" "$a/owned/run-acb" "$a/owned/state"
  cp "$bin_dir/acb-assigner" "$a/rootfs/usr/local/bin/"
  chmod 0755 "$a/rootfs/usr/local/bin/acb-assigner"
  chmod 0755 "$a/owned/run-acb" "$a/owned/state"
  if [[ $assigner_base == scratch ]]; then
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    ldd "$bin_dir/acb-assigner" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
      while read -r lib; do
        mkdir -p "$a/rootfs$(dirname "$lib")"
        cp -L "$lib" "$a/rootfs$lib"
      done
    mkdir -p "$a/rootfs/etc" "$a/rootfs/tmp"
    chmod 1777 "$a/rootfs/tmp"
    printf 'root:x:0:0:root:/:/sbin/nologin\nacb:x:10001:10001:acb assigner:/var/lib/acb:/sbin/nologin\n' >"$a/rootfs/etc/passwd"
    printf 'root:x:0:\nacb:x:10001:\n' >"$a/rootfs/etc/group"
    # An ld.so.cache, as a glibc system has (the NVIDIA toolkit's hook runs ldconfig on the
    # container when it adds libnvidia-ml; NVML is dlopen()ed by name).
    printf '/usr/local/lib\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$a/rootfs/etc/ld.so.conf"
    ldconfig -r "$a/rootfs" 2>/dev/null || true
  fi
  "${docker[@]}" build "${build_args[@]}" --build-arg "BASE=$assigner_base" -f "$here/assigner.Dockerfile" \
    -t "acb-assigner:$tag" "$a"
fi

if [[ $only != assigner ]]; then
  c=$ctx/client
  mkdir -p "$c/wheel" "$c/include"
  cp "$root/include/acb.h" "$c/include/"
  if [[ -n $wheel ]]; then
    cp "$wheel" "$c/wheel/"
  else
    # build-wheel.sh's step 2 in a copy of the package: setup.py writes into its own folder.
    src=$ctx/src
    mkdir -p "$src/bindings" "$src/include"
    cp "$root/include/acb.h" "$src/include/"
    tar -C "$root/bindings" --exclude=build --exclude='_libacb*' --exclude=__pycache__ --exclude='*.egg-info' \
      -cf - python | tar -C "$src/bindings" -xf -
    isolation=()
    # Offline when this Python can build it (setuptools >= 64 and wheel); else pip fetches them.
    if python3 -c 'import setuptools, wheel.bdist_wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null; then
      isolation=(--no-build-isolation)
    fi
    ACB_PREBUILT=$bin_dir python3 -m pip wheel --quiet --disable-pip-version-check --no-deps "${isolation[@]}" \
      -w "$c/wheel" "$src/bindings/python"
  fi
  "${docker[@]}" build "${build_args[@]}" --build-arg "BASE=$base" -f "$here/client.Dockerfile" -t "acb-client:$tag" "$c"
fi
"${docker[@]}" image ls --filter "reference=acb-assigner:$tag" --filter "reference=acb-client:$tag"
