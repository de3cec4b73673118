#!/bin/bash
# acb's Slurm node-level mode, TaskProlog: runs as the job's user before each task; when this
# job has an assigner on this node (prolog.sh started one), prints
#   export ACB_ASSIGNER=unix:$ACB_SLURM_RUN_DIR/job-$SLURM_JOB_ID-$SLURMD_NODENAME.sock
# which slurmstepd puts in the task's environment, so every acb client (libacb, acb.torch,
# agarun, acb-assigner alloc) finds it. It replaces an ACB_ASSIGNER the job brought along. Prints
# nothing otherwise. Only `export NAME=value` lines on stdout reach the task: nothing else is
# printed there.
set -u
acb_what=task_prolog
# shellcheck source=common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

if acb_job_ok && [ -S "$ACB_SOCK" ]; then
  echo "export ACB_ASSIGNER=unix:$ACB_SOCK"
fi
exit 0
