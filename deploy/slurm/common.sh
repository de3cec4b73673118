# shellcheck shell=bash
# acb's Slurm node-level mode: what prolog.sh, epilog.sh and task_prolog.sh share (sourced, not
# run). Settings, the job's files, logging, and stopping the job's assigner.
#
# Settings: Slurm gives Prolog and Epilog an environment of its own (SLURM_* only, not even
# PATH), so they come from a file: $ACB_SLURM_ENV, by default /etc/acb/slurm.env, sourced by
# bash when it exists; it must be root's and not writable by group or others (the Prolog runs
# it as root), else it is not read and the Prolog fails (as below: logged, exit 0).
#   ACB_SLURM_RUN_DIR        sockets, pid files, logs          (default /run/acb/slurm)
#   ACB_ASSIGNER_BIN         the acb-assigner binary           (default: acb-assigner in PATH,
#                            /usr/local/bin, /usr/bin)
#   ACB_SLURM_GPUS           serve's --gpus                    (default slurm: the job's GPUs)
#   ACB_SLURM_ARGS           more serve flags, split on spaces (e.g. --scheduler gpu-affinity)
#   ACB_SLURM_STRICT         1: a failed start fails the Prolog (Slurm then drains the node and
#                            requeues the job); default 0: logged, the job runs without acb
#   ACB_SLURM_READY_TIMEOUT  seconds the Prolog waits for the assigner to answer (default 10)
#   ACB_SLURM_STOP_TIMEOUT   seconds the Epilog waits after SIGTERM before SIGKILL (default 15)
#   ACB_SLURM_LOG            this mode's log (default $ACB_SLURM_RUN_DIR/acb-slurm.log)
#   ACB_SLURM_KEEP_LOGS      1: the Epilog keeps each assigner's own log (default: removed)
# A job's files, per node: $ACB_SLURM_RUN_DIR/job-$SLURM_JOB_ID-$SLURMD_NODENAME.{sock,pid,log}.

acb_conf=${ACB_SLURM_ENV:-/etc/acb/slurm.env}
# Set when the settings file is there but not safe to source (prolog.sh then fails).
# shellcheck disable=SC2034
acb_conf_error=""
if [ -e "$acb_conf" ]; then
  read -r acb_conf_uid acb_conf_mode < <(stat -L -c '%u %a' "$acb_conf" 2>/dev/null) || true
  if [ "${acb_conf_uid:-}" != 0 ] || [ $((8#${acb_conf_mode:-2} & 8#022)) -ne 0 ]; then
    # shellcheck disable=SC2034
    acb_conf_error="$acb_conf is not root's, or group or others can write it (uid ${acb_conf_uid:-?}, mode ${acb_conf_mode:-?}): not read"
  elif [ -r "$acb_conf" ]; then
    # shellcheck source=/dev/null
    . "$acb_conf"
  fi
fi
ACB_SLURM_RUN_DIR=${ACB_SLURM_RUN_DIR:-/run/acb/slurm}
ACB_SLURM_GPUS=${ACB_SLURM_GPUS:-slurm}
ACB_SLURM_ARGS=${ACB_SLURM_ARGS:-}
ACB_SLURM_STRICT=${ACB_SLURM_STRICT:-0}
ACB_SLURM_READY_TIMEOUT=${ACB_SLURM_READY_TIMEOUT:-10}
ACB_SLURM_STOP_TIMEOUT=${ACB_SLURM_STOP_TIMEOUT:-15}
ACB_SLURM_LOG=${ACB_SLURM_LOG:-$ACB_SLURM_RUN_DIR/acb-slurm.log}
ACB_SLURM_KEEP_LOGS=${ACB_SLURM_KEEP_LOGS:-0}

acb_what=${acb_what:-acb-slurm}
acb_job=${SLURM_JOB_ID:-}
acb_node=${SLURMD_NODENAME:-$(hostname -s 2>/dev/null || echo unknown)}

# One line to this mode's log (when it can be written) and to stderr.
acb_log() {
  local line
  line="$(date '+%Y-%m-%dT%H:%M:%S%z') acb-slurm $acb_what job $acb_job on $acb_node: $*"
  echo "$line" >&2
  if [ -d "$(dirname "$ACB_SLURM_LOG")" ]; then
    echo "$line" >>"$ACB_SLURM_LOG" 2>/dev/null || true
  fi
}

# Whether the job id and node name can name files (they come from Slurm; checked anyway).
acb_job_ok() {
  [[ "$acb_job" =~ ^[0-9]+$ ]] && [[ "$acb_node" =~ ^[A-Za-z0-9._-]+$ ]]
}

acb_base="$ACB_SLURM_RUN_DIR/job-$acb_job-$acb_node"
ACB_SOCK="$acb_base.sock"
ACB_PIDFILE="$acb_base.pid"
ACB_DAEMON_LOG="$acb_base.log"

# The acb-assigner binary, or nothing.
acb_bin() {
  if [ -n "${ACB_ASSIGNER_BIN:-}" ]; then
    [ -x "$ACB_ASSIGNER_BIN" ] && echo "$ACB_ASSIGNER_BIN"
    return
  fi
  PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" command -v acb-assigner
}

# Whether process $1 is this job's assigner on this node: its command line (which a zombie no
# longer has) runs acb-assigner serve on this job's socket.
acb_is_ours() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *acb-assigner*" serve "*"unix:$ACB_SOCK "* ]]
}

# Stops this job's assigner on this node, if its pid file names one: SIGTERM, then SIGKILL after
# ACB_SLURM_STOP_TIMEOUT seconds. Never signals a process that is not that assigner. Removes
# the socket and the pid file, and the assigner's log unless ACB_SLURM_KEEP_LOGS=1. $1: `report`
# logs a pid file whose process is not the assigner (any more); `quiet` does not (the Prolog's
# own failed start).
acb_stop() {
  local pid="" deadline mode=${1:-report}
  if [ -f "$ACB_PIDFILE" ]; then
    read -r pid <"$ACB_PIDFILE" || true
  fi
  if [[ "$pid" =~ ^[0-9]+$ ]] && acb_is_ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + ACB_SLURM_STOP_TIMEOUT))
    while acb_is_ours "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    if acb_is_ours "$pid"; then
      acb_log "acb-assigner (pid $pid) still runs ${ACB_SLURM_STOP_TIMEOUT}s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    else
      acb_log "stopped acb-assigner (pid $pid)"
    fi
  elif [ -n "$pid" ] && [ "$mode" = report ]; then
    acb_log "pid file $ACB_PIDFILE names pid $pid, which is not this job's acb-assigner (it ended): nothing signalled"
  fi
  rm -f "$ACB_SOCK" "$ACB_PIDFILE"
  if [ "$ACB_SLURM_KEEP_LOGS" != 1 ]; then
    rm -f "$ACB_DAEMON_LOG"
  fi
}
