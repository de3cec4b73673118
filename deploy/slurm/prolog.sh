#!/bin/bash
# acb's Slurm node-level mode, Prolog: for a job with GPUs on this node, starts an acb-assigner
# of its own (standalone, the job's GPUs only: --gpus slurm) on
# $ACB_SLURM_RUN_DIR/job-$SLURM_JOB_ID-$SLURMD_NODENAME.sock, owned by the job's user;
# task_prolog.sh then gives each task ACB_ASSIGNER, and epilog.sh stops it.
#
# slurm.conf (see slurm.conf.example): Prolog=.../prolog.sh, PrologFlags=Alloc (so it runs on
# every node of the job at allocation, before the batch script). Runs as root, with Slurm's
# environment (SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_GPUS, SLURMD_NODENAME, ...). Settings: see
# common.sh (/etc/acb/slurm.env).
#
# A Prolog that fails makes Slurm drain the node and requeue the job. So by default a failure
# to start the assigner is logged and the job runs without acb (exit 0); ACB_SLURM_STRICT=1
# makes it fail the Prolog instead. A job without GPUs here is left alone.
set -u
acb_what=prolog
# shellcheck source=common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

# No GPU of this job on this node: nothing to do.
if [ -z "${SLURM_JOB_GPUS:-}" ]; then
  exit 0
fi

# Logs why, stops the assigner this Prolog started (its own child: signalled by pid, whatever
# it runs yet), removes the job's files, and exits: 0 (the job runs without acb), or 1 when
# ACB_SLURM_STRICT=1.
pid=""
fail() {
  if [ "$ACB_SLURM_STRICT" = 1 ]; then
    acb_log "FAILED, the job cannot start here (ACB_SLURM_STRICT=1): $*"
  else
    acb_log "FAILED, the job runs without acb: $*"
  fi
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    local deadline=$((SECONDS + ACB_SLURM_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  acb_stop quiet
  [ "$ACB_SLURM_STRICT" = 1 ] && exit 1
  exit 0
}

[ -z "$acb_conf_error" ] || fail "$acb_conf_error"
acb_job_ok || fail "job id ${acb_job@Q} or node name ${acb_node@Q} cannot name a file"
uid=${SLURM_JOB_UID:-}
[[ "$uid" =~ ^[0-9]+$ ]] || fail "SLURM_JOB_UID=${uid@Q} is not a uid"
bin=$(acb_bin) || fail "no acb-assigner (set ACB_ASSIGNER_BIN in ${acb_conf})"
[ -n "$bin" ] || fail "no acb-assigner (set ACB_ASSIGNER_BIN in ${acb_conf})"
if [ ! -d "$ACB_SLURM_RUN_DIR" ]; then
  # 0755 and root's (the assigner refuses a socket directory others can write).
  mkdir -p "$(dirname "$ACB_SLURM_RUN_DIR")" && mkdir -m 0755 "$ACB_SLURM_RUN_DIR" ||
    [ -d "$ACB_SLURM_RUN_DIR" ] || fail "cannot make $ACB_SLURM_RUN_DIR"
fi

# A requeued job keeps its id: a daemon its earlier run left here goes first.
acb_stop report

read -r -a extra <<<"$ACB_SLURM_ARGS"
# Detached: its own session (a Prolog's process group is killed when the Prolog times out),
# nothing of Slurm's open. Not a process group leader here (no job control), so setsid execs
# in place and $! is the assigner's pid.
setsid "$bin" serve --listen "unix:$ACB_SOCK" --gpus "$ACB_SLURM_GPUS" --node-name "$acb_node" \
  --state-dir none "${extra[@]}" </dev/null >"$ACB_DAEMON_LOG" 2>&1 &
pid=$!
echo "$pid" >"$ACB_PIDFILE" || fail "cannot write $ACB_PIDFILE"

# Ready when a client's status call is answered.
deadline=$((SECONDS + ACB_SLURM_READY_TIMEOUT))
until "$bin" status --assigner "unix:$ACB_SOCK" >/dev/null 2>&1; do
  # Our child: alive until bash reaps it (its command line may still be bash's or setsid's for
  # a moment, before the exec).
  if ! kill -0 "$pid" 2>/dev/null; then
    fail "acb-assigner exited at start; its output ends: $(tail -n 5 "$ACB_DAEMON_LOG" | tr '\n' ' ')"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail "acb-assigner (pid $pid) did not answer on unix:$ACB_SOCK within ${ACB_SLURM_READY_TIMEOUT}s; its output ends: $(tail -n 5 "$ACB_DAEMON_LOG" | tr '\n' ' ')"
  fi
  sleep 0.1
done

# The daemon made the socket root's, mode 0660: the job's user gets it (and, as its owner, the
# clients' owner check accepts it). No one else can connect: the directory is root's, 0755.
chown "$uid" "$ACB_SOCK" || fail "cannot give $ACB_SOCK to uid $uid"
acb_log "acb-assigner (pid $pid) serves GPUs ${SLURM_JOB_GPUS} (--gpus $ACB_SLURM_GPUS) on unix:$ACB_SOCK for uid $uid"
exit 0
