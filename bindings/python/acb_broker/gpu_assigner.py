"""gpu_assigner: Fujitsu ACB's command for its GPU assigner, on acb's `acb-assigner`.

    gpu_assigner [--address A] [--port P] [--scheduler simple|gpu-sharing|gpu-affinity]
                 [--gpu-list 0,1] start|status|stop

What users of Fujitsu's ACB type, mapped onto acb:
- `start` runs `acb-assigner serve` in the background (its own session, stdin closed), records
  its pid in a per-user runtime directory, and waits until it says it is ready. Its output goes
  to a log file there. With neither `--address` nor `--port` it listens on acb's default Unix
  socket, where acb clients look when nothing is set; with either, on `tcp:ADDRESS:PORT`
  (default address 127.0.0.1, default port 50051: Fujitsu's documentation gives none).
- `status` runs `acb-assigner status` against it.
- `stop` sends SIGTERM to the pid that `start` recorded, and to nothing else (the process's
  start time is recorded too, so a reused pid is never signalled), and waits for it to drain.

`--gpu-list` picks GPUs by NVML index: acb-assigner serves those (`--gpus auto:0,1`), or every
GPU the NVIDIA driver finds when the list names them all or is left out. Without an NVIDIA
driver, simulated GPUs stand in (one per listed index, else one), and `start` says so.

acb's own flags, for what Fujitsu's command does not cover: `--gpus SPEC` (acb's inventory,
e.g. `fake:2x80GiB`, instead of --gpu-list), `--auth-token-file`, `--tls-cert`, `--tls-key` and
`--insecure` (a TCP address other than loopback needs a token, and TLS or --insecure).

The acb-assigner binary is `ACB_ASSIGNER_BIN`, else `acb-assigner` on PATH, else the source
tree's target/{release,debug}/acb-assigner. The runtime directory is `ACB_GPU_ASSIGNER_DIR`,
else /run/acb-gpu_assigner as root, $XDG_RUNTIME_DIR/acb-gpu_assigner, or
/tmp/acb-gpu_assigner-UID.
"""
import argparse
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import List, Optional

# The port of `--address A` alone, and of AGA_GPU_ALLOC_SERVER_ADDRESS alone on the client side:
# the same number as acb-client's AGA_DEFAULT_PORT (a test compares them).
DEFAULT_PORT = 50051
SIMULATED_GPU = "80GiB"
RECORD = "gpu_assigner.json"
LOG = "gpu_assigner.log"
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.normpath(os.path.join(_HERE, "..", ".."))


class Refused(Exception):
    """What the user asked cannot be done; the message says why. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_assigner",
        description="Start, query or stop acb's GPU assigner (acb-assigner), as Fujitsu ACB's gpu_assigner does.",
    )
    p.add_argument("command", choices=["start", "status", "stop"])
    p.add_argument("--address", help="listen on this IP or host name (TCP; default 127.0.0.1 when --port is given)")
    p.add_argument("--port", help=f"listen on this TCP port (default {DEFAULT_PORT} when --address is given)")
    p.add_argument("--scheduler", choices=["simple", "gpu-sharing", "gpu-affinity"], default="simple",
                   help="the scheduling policy (default simple)")
    p.add_argument("--gpu-list", help="the GPUs to serve, by index, e.g. 0,1 (default: all)")
    acb = p.add_argument_group("acb's own options")
    acb.add_argument("--gpus", help="acb's GPU inventory instead of --gpu-list: auto, none, or fake:COUNTxSIZE")
    acb.add_argument("--auth-token-file", help="a file whose first line is the token every call must carry "
                                              "(required for a TCP address other than loopback)")
    acb.add_argument("--tls-cert", help="TLS on the TCP listener: the certificate chain (PEM)")
    acb.add_argument("--tls-key", help="TLS on the TCP listener: the private key (PEM)")
    acb.add_argument("--insecure", action="store_true",
                     help="allow a TCP address other than loopback without TLS (the token crosses in the clear)")
    return p


# ---------------------------------------------------------------------------------------------
# Where things are


def runtime_dir() -> str:
    """This user's directory for the pid record and the log, made 0700 if missing; refused if
    another user owns it or others can write it (they could plant a record naming any pid)."""
    d = os.environ.get("ACB_GPU_ASSIGNER_DIR")
    if not d:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if os.geteuid() == 0:
            d = "/run/acb-gpu_assigner"
        elif xdg and os.path.isabs(xdg):
            d = os.path.join(xdg, "acb-gpu_assigner")
        else:
            d = f"/tmp/acb-gpu_assigner-{os.geteuid()}"
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Refused(f"gpu_assigner: {d} is not a directory of this user's that only it can write; "
                      "remove it, or set ACB_GPU_ASSIGNER_DIR to one")
    return d


def find_assigner() -> str:
    """The acb-assigner binary: ACB_ASSIGNER_BIN, PATH, beside the interpreter (where the binary
    wheel puts it), then the source tree's target/."""
    env = os.environ.get("ACB_ASSIGNER_BIN")
    if env:
        if os.access(env, os.X_OK) and os.path.isfile(env):
            return env
        raise Refused(f"gpu_assigner: ACB_ASSIGNER_BIN={env}: not an executable file")
    found = shutil.which("acb-assigner")
    if found:
        return found
    # The binary wheel installs it beside this interpreter (the environment's bin/), which need
    # not be on PATH.
    beside = os.path.join(os.path.dirname(sys.executable), "acb-assigner")
    if os.access(beside, os.X_OK) and os.path.isfile(beside):
        return beside
    for profile in ("release", "debug"):
        c = os.path.join(_ROOT, "target", profile, "acb-assigner")
        if os.access(c, os.X_OK):
            return c
    raise Refused("gpu_assigner: acb-assigner not found: install it (cargo install --path acb-assigner, "
                  "or build it with cargo build --release -p acb-assigner) and put it on PATH, "
                  "or set ACB_ASSIGNER_BIN to its path")


# ---------------------------------------------------------------------------------------------
# What to run


def listen_address(address: Optional[str], port: Optional[str]) -> Optional[str]:
    """`tcp:IP:PORT` for --address/--port (a host name resolved, IPv4 first), None for neither
    (acb's default Unix socket)."""
    if address is None and port is None:
        return None
    if port is None:
        n = DEFAULT_PORT
    else:
        try:
            n = int(str(port).strip())
        except ValueError:
            n = 0
        if not 0 < n < 65536:
            raise Refused(f"gpu_assigner: --port {port}: expected a port number, 1 to 65535", 2)
    host = (address or "127.0.0.1").strip()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(bare, n, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Refused(f"gpu_assigner: --address {host}: not an IP address or a known host ({e})", 2)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    ip = ipaddress.ip_address(infos[0][4][0])
    return f"tcp:{ip}:{n}" if ip.version == 4 else f"tcp:[{ip}]:{n}"


def is_loopback(listen: str) -> bool:
    host = listen[len("tcp:"):].rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host).is_loopback


def parse_gpu_list(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        out = []
    if not out or any(i < 0 for i in out):
        raise Refused(f"gpu_assigner: --gpu-list {text}: expected GPU indexes, e.g. 0,1", 2)
    if len(set(out)) != len(out):
        raise Refused(f"gpu_assigner: --gpu-list {text}: a GPU is named twice", 2)
    return out


def nvml_gpu_count() -> Optional[int]:
    """How many GPUs the NVIDIA driver reports (NVML, as acb-assigner's --gpus auto finds them),
    or None without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        count = ctypes.c_uint(0)
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        nvml.nvmlShutdown()
        return count.value if ok else None
    except AttributeError:
        return None


def gpus_spec(gpu_list: Optional[List[int]], nvml_count: Optional[int]) -> tuple:
    """acb-assigner's --gpus for Fujitsu's --gpu-list, given how many GPUs NVML finds (None: no
    driver): (spec, a note for the user or None)."""
    if nvml_count is None or nvml_count == 0:
        n = len(gpu_list) if gpu_list else 1
        why = "no NVIDIA driver (NVML) found" if nvml_count is None else "the NVIDIA driver reports no GPU"
        return (f"fake:{n}x{SIMULATED_GPU}",
                f"{why}: serving {n} SIMULATED GPU(s) of {SIMULATED_GPU} (--gpus fake:{n}x{SIMULATED_GPU}); "
                "jobs are scheduled, but nothing they run is on a real GPU")
    if gpu_list is None:
        return "auto", None
    missing = [i for i in gpu_list if i >= nvml_count]
    if missing:
        raise Refused(f"gpu_assigner: --gpu-list names GPU {missing[0]}, but the NVIDIA driver reports "
                      f"{nvml_count} GPU(s), 0 to {nvml_count - 1}", 2)
    if sorted(gpu_list) != list(range(nvml_count)):
        return "auto:" + ",".join(map(str, sorted(gpu_list))), None
    return "auto", None


def serve_command(binary: str, args: argparse.Namespace) -> tuple:
    """The acb-assigner serve command line for `args`, and the notes to print."""
    notes = []
    cmd = [binary, "serve", "--scheduler", args.scheduler]
    listen = listen_address(args.address, args.port)
    if listen is not None:
        cmd += ["--listen", listen]
        if not is_loopback(listen):
            if not args.auth_token_file:
                raise Refused(
                    f"gpu_assigner: {listen} is reachable from other machines, so acb requires a token on every "
                    "call: give --auth-token-file FILE (its first line, at least 16 characters, e.g. from "
                    "`openssl rand -hex 16`), and give the jobs the same file in ACB_AUTH_TOKEN_FILE; "
                    "or listen on 127.0.0.1", 2)
            if not (args.tls_cert and args.tls_key) and not args.insecure:
                raise Refused(
                    f"gpu_assigner: {listen} is reachable from other machines: give --tls-cert and --tls-key "
                    "(jobs then set ACB_TLS_CA), or --insecure to send the token in the clear", 2)
    if args.gpus and args.gpu_list:
        raise Refused("gpu_assigner: --gpus and --gpu-list both name the GPUs: give one", 2)
    if args.gpus:
        spec = args.gpus
    else:
        spec, note = gpus_spec(parse_gpu_list(args.gpu_list), nvml_gpu_count())
        if note:
            notes.append(note)
    cmd += ["--gpus", spec]
    for flag, value in (("--auth-token-file", args.auth_token_file), ("--tls-cert", args.tls_cert),
                        ("--tls-key", args.tls_key)):
        if value:
            cmd += [flag, os.path.abspath(value)]
    if args.insecure:
        cmd.append("--insecure")
    return cmd, notes


# ---------------------------------------------------------------------------------------------
# The record of the daemon we started


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (field 22 of /proc/PID/stat), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def read_record(d: str) -> Optional[dict]:
    try:
        with open(os.path.join(d, RECORD)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Refused(f"gpu_assigner: {os.path.join(d, RECORD)} is unreadable ({e}); remove it if no "
                      "acb-assigner started by gpu_assigner runs")


def alive(record: dict) -> bool:
    """Whether the recorded process still runs: same pid, same start time."""
    return _start_time(int(record["pid"])) == record.get("start_time")


def write_record(d: str, record: dict) -> None:
    tmp = os.path.join(d, RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(d, RECORD))


def remove_record(d: str) -> None:
    try:
        os.unlink(os.path.join(d, RECORD))
    except FileNotFoundError:
        pass


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# The commands


def start(args: argparse.Namespace, d: str) -> int:
    record = read_record(d)
    if record is not None:
        if alive(record):
            raise Refused(f"gpu_assigner: already running (pid {record['pid']}, on {' '.join(record['listen'])}; "
                          f"log {os.path.join(d, LOG)}): `gpu_assigner stop` first")
        remove_record(d)
    cmd, notes = serve_command(find_assigner(), args)
    for n in notes:
        print(f"gpu_assigner: {n}", file=sys.stderr)
    log_path = os.path.join(d, LOG)
    with open(log_path, "w") as log:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True)
    record = {"pid": child.pid, "start_time": _start_time(child.pid), "listen": [], "command": cmd,
              "auth_token_file": os.path.abspath(args.auth_token_file) if args.auth_token_file else None}
    write_record(d, record)
    deadline = time.monotonic() + float(os.environ.get("ACB_GPU_ASSIGNER_START_TIMEOUT", "30"))
    while True:
        ready = [line for line in _tail(log_path, 1000).splitlines() if line.startswith("acb-assigner ready on ")]
        if ready:
            record["listen"] = ready[0][len("acb-assigner ready on "):].split()
            write_record(d, record)
            break
        code = child.poll()
        if code is not None:
            remove_record(d)
            raise Refused(f"gpu_assigner: acb-assigner exited with status {code} before it was ready:\n"
                          f"{_tail(log_path)}\n(command: {' '.join(cmd)})")
        if time.monotonic() > deadline:
            child.terminate()
            child.wait()
            remove_record(d)
            raise Refused(f"gpu_assigner: acb-assigner was not ready in time; stopped it. Its log:\n{_tail(log_path)}")
        time.sleep(0.05)
    where = " ".join(record["listen"])
    print(f"gpu_assigner: started acb-assigner (pid {child.pid}) on {where}, scheduler {args.scheduler}; log {log_path}")
    tcp = [a for a in record["listen"] if a.startswith("tcp:")]
    if tcp:
        host, port = tcp[0][len("tcp:"):].rsplit(":", 1)
        print(f"gpu_assigner: jobs reach it with AGA_GPU_ALLOC_SERVER_ADDRESS={host.strip('[]')} "
              f"AGA_GPU_ALLOC_SERVER_PORT={port}, or ACB_ASSIGNER={tcp[0]}")
    return 0


def status(args: argparse.Namespace, d: str) -> int:
    record = read_record(d)
    if record is not None and alive(record):
        print(f"gpu_assigner: acb-assigner running (pid {record['pid']}) on {' '.join(record['listen'])}; "
              f"log {os.path.join(d, LOG)}")
    elif args.address is None and args.port is None:
        print("gpu_assigner: no acb-assigner started by gpu_assigner is running", file=sys.stderr)
        return 1
    target = listen_address(args.address, args.port)
    if target is None:
        assert record is not None  # returned above when neither is given and none runs
        target = record["listen"][0]
    cmd = [find_assigner(), "status", "--assigner", target]
    token = args.auth_token_file or (record or {}).get("auth_token_file")
    if token:
        cmd += ["--auth-token-file", token]
    sys.stdout.flush()
    return subprocess.call(cmd)


def stop(args: argparse.Namespace, d: str) -> int:
    record = read_record(d)
    if record is None:
        raise Refused(f"gpu_assigner: not running (no acb-assigner started by gpu_assigner: nothing recorded in {d})")
    pid = int(record["pid"])
    if not alive(record):
        remove_record(d)
        raise Refused(f"gpu_assigner: not running (acb-assigner pid {pid} has already exited; see {os.path.join(d, LOG)})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float(os.environ.get("ACB_GPU_ASSIGNER_STOP_TIMEOUT", "60"))
    while alive(record):
        if time.monotonic() > deadline:
            raise Refused(f"gpu_assigner: acb-assigner (pid {pid}) is still draining after SIGTERM; "
                          f"see {os.path.join(d, LOG)}")
        time.sleep(0.05)
    remove_record(d)
    print(f"gpu_assigner: stopped acb-assigner (pid {pid})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        d = runtime_dir()
        return {"start": start, "status": status, "stop": stop}[args.command](args, d)
    except Refused as e:
        print(e, file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
