#!/bin/bash
# The white paper's comparison on a Slurm cluster: 8 AlphaFold2-like steps brokered by acb on
# 1 GPU beside 2 static steps on 2 GPUs, submitted at the same time (one run, side by side),
# then proteins per hour of each and their ratio. acb-assigner must be on PATH on every node.
#   examples/slurm/run.sh [sbatch options, e.g. -p gpu]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
sbatch --wait --parsable --gres=gpu:2 --export=ALL,MODE=static,JOBS=2 -o "$out/static.out" "$@" "$here/alphafold.sbatch" >/dev/null &
s=$!
sbatch --wait --parsable --gres=gpu:1 --export=ALL,MODE=brokered,JOBS=8 -o "$out/brokered.out" "$@" "$here/alphafold.sbatch" >/dev/null &
b=$!
if ! wait "$s" || ! wait "$b"; then echo "a job failed; its output is in $out" >&2; exit 1; fi
grep -h '^RESULT' "$out/static.out" "$out/brokered.out"
awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } rate[v["mode"]] = v["proteins_per_hour"] }
     END { printf "brokered on 1 GPU / static on 2 GPUs: %.2fx the proteins per hour, with half the GPUs\n", rate["brokered"] / rate["static"] }' \
  "$out/static.out" "$out/brokered.out"
rm -rf "$out"
