#!/bin/bash
# acb's Slurm node-level mode, Epilog: stops the job's acb-assigner on this node (the one
# prolog.sh started: by its pid file, and only if that pid still runs acb-assigner on the job's
# socket), SIGTERM then SIGKILL after ACB_SLURM_STOP_TIMEOUT seconds, and removes its socket,
# pid file and log. Nothing to do (a job without GPUs, or a failed start): exits 0 at once.
# Always exits 0: a failing Epilog drains the node.
set -u
acb_what=epilog
# shellcheck source=common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

acb_job_ok || exit 0
if [ -e "$ACB_PIDFILE" ] || [ -e "$ACB_SOCK" ]; then
  acb_stop report
fi
exit 0
