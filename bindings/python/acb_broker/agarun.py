"""agarun: runs any command with the acb client configured for it.

    agarun [--assigner ADDR] [--job NAME] [--mode manual|auto] [--idle-ms MS] [--eager]
           [--gpus N] [--memory SIZE] [--auth-token-file FILE] [--group NAME] [--group-size N]
           [--profile OUT] -- COMMAND [ARGS...]
    agarun --check [--assigner ADDR]

It sets ACB_ASSIGNER, ACB_JOB_ID, ACB_GPUS, ACB_MEMORY, ACB_MODE (and ACB_AUTH_TOKEN_FILE,
ACB_GROUP, ACB_GROUP_SIZE) for the command, forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, and exits
with its status (128 + N when a signal N ended it). `--check` says whether the assigner is
reachable and what it offers. `--profile OUT` records the command's GPU and CPU phases (from
libacb's begin/end, with the job's peak swappable device memory as measured at each phase end)
into OUT, a trace for `acb-assigner simulate`, and says whether acb will help it.

Fujitsu ACB's variables work too: `AGA_ENABLE_AUTO=1` means `--mode auto` (a `--mode` flag
wins), `AGA_REQUEST_DEVICE=cpu` runs the command unbrokered (no GPU is requested; `any` and
`cuda` request one), and AGA_GPU_ALLOC_SERVER_ADDRESS/AGA_GPU_ALLOC_SERVER_PORT name the
assigner (libacb reads them; ACB_ASSIGNER and --assigner win).

Under torchrun or in a Slurm step of more than one process, libacb makes each process one
member of the job's group (granted together) by itself: `agarun -- torchrun ...` needs no flag;
`--group ''` opts out.

`--mode auto` brokers any CUDA program with no change to it: agarun preloads libacb_preload.so
(the CUDA interposer) and libacb, so the program's CUDA memory is libacb's and its kernel
launches, copies and other GPU work are gated at the driver; the GPU goes back after `--idle-ms`
without a CUDA call (lazily, or at once with `--eager`). A PyTorch program is then left to the
interposer; where the interposer is missing, acb.torch.enable_auto() gates it through PyTorch's
dispatch mode instead (through a sitecustomize agarun puts first on PYTHONPATH).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

FORWARDED = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agarun",
        description="Run a command with the acb client configured for it.",
        usage="agarun [options] -- COMMAND [ARGS...]\n       agarun --check [--assigner ADDR]",
    )
    p.add_argument("--assigner", help="the assigner: unix:/path.sock or tcp:IP:PORT (default: $ACB_ASSIGNER, else the default socket)")
    p.add_argument("--job", help="the job's name (default: $ACB_JOB_ID, else a generated id)")
    p.add_argument("--mode", choices=["manual", "auto"],
                   help="manual (the default, or auto if AGA_ENABLE_AUTO=1): the program calls on_device_begin/end; "
                        "auto: a PyTorch program is brokered with no change to it")
    p.add_argument("--idle-ms", type=int, help="auto mode: give the GPU back after this long without a CUDA "
                                                "operation (default 200)")
    p.add_argument("--eager", action="store_true", help="give the GPU back at once at each release, not when "
                                                          "another job waits")
    p.add_argument("--gpus", type=int, help="GPUs per GPU phase (the default for acb.on_device_begin)")
    p.add_argument("--memory", help="memory per GPU, e.g. 20GiB (the default for acb.on_device_begin)")
    p.add_argument("--auth-token-file", help="a file whose first line is the assigner's auth token")
    p.add_argument("--group", help="the gang this command's processes are members of, granted together "
                                   "(ACB_GROUP; default: torchrun's or Slurm's job of more than one process; "
                                   "'' for none)")
    p.add_argument("--group-size", type=int, help="how many processes the group has, 1 to 4096 (ACB_GROUP_SIZE)")
    p.add_argument("--check", action="store_true", help="say whether the assigner is reachable and what it offers")
    p.add_argument("--profile", metavar="OUT",
                   help="record the command's GPU and CPU phases into OUT (a trace for acb-assigner simulate) "
                        "and say whether acb will help it")
    return p


def _check(assigner: Optional[str]) -> int:
    import acb_broker as acb

    aga = [v for v in ("AGA_GPU_ALLOC_SERVER_ADDRESS", "AGA_GPU_ALLOC_SERVER_PORT") if os.environ.get(v)]
    where = (assigner or os.environ.get("ACB_ASSIGNER")
             or (f"the address in {' and '.join(aga)}" if aga else "the default socket"))
    try:
        with acb.Client(assigner=assigner, connect_retries=0) as client:
            status = client.status()
    except acb.AssignerUnavailable as e:
        print(f"agarun: the assigner at {where} is not reachable: {e}", file=sys.stderr)
        return 1
    except acb.AcbError as e:
        print(f"agarun: {e}", file=sys.stderr)
        return 1
    gpus = status.get("gpus", [])
    simulated = any(g.get("simulated") for g in gpus)
    free = sum(1 for g in gpus if g.get("healthy") and not g.get("holders"))
    print(f"assigner at {where}: acb-assigner {status.get('version')}, scheduler {status.get('scheduler')}")
    print(f"{len(gpus)} GPU(s){' (SIMULATED)' if simulated else ''}, {free} free, "
          f"{len(status.get('queue', []))} request(s) queued, {len(status.get('clients', []))} client(s)")
    for g in gpus:
        holders = ", ".join(h["job"] for h in g.get("holders", [])) or "free"
        print(f"  gpu{g['id']} {g['node']}:{g['index']} {g['name']} {g['memory'] / 2**30:.0f} GiB: {holders}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        opts, command = argv[:i], argv[i + 1:]
    else:
        opts, command = argv, []
    p = _parser()
    args = p.parse_args(opts)
    if args.check:
        return _check(args.assigner)
    if not command:
        p.print_usage(sys.stderr)
        print("agarun: no command given (put it after --)", file=sys.stderr)
        return 2
    from acb_broker import _aga

    try:
        request = _aga.request_device()
        if args.mode is None:
            args.mode = "auto" if _aga.auto_enabled() else "manual"
    except ValueError as e:
        print(f"agarun: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if request == "cpu":
        # Fujitsu ACB's "run on the CPU": nothing is brokered, so nothing is gated or profiled.
        print("agarun: AGA_REQUEST_DEVICE=cpu: the command runs without acb (no GPU is requested)", file=sys.stderr)
        args.mode, args.profile, args.idle_ms = "manual", None, None
    if args.assigner:
        if not args.assigner.startswith(("unix:", "tcp:")):
            print(f"agarun: --assigner {args.assigner!r}: expected unix:/path.sock or tcp:IP:PORT", file=sys.stderr)
            return 2
        env["ACB_ASSIGNER"] = args.assigner
    if args.job:
        env["ACB_JOB_ID"] = args.job
    if args.gpus is not None:
        if args.gpus < 1:
            print("agarun: --gpus must be at least 1", file=sys.stderr)
            return 2
        env["ACB_GPUS"] = str(args.gpus)
    if args.memory is not None:
        from acb_broker import parse_size

        try:
            if parse_size(args.memory) == 0:
                raise ValueError("--memory must be more than 0 bytes")
        except ValueError as e:
            print(f"agarun: --memory: {e}", file=sys.stderr)
            return 2
        env["ACB_MEMORY"] = args.memory
    if args.group_size is not None and not 1 <= args.group_size <= 4096:
        print("agarun: --group-size must be 1 to 4096", file=sys.stderr)
        return 2
    if args.group is not None:
        env["ACB_GROUP"] = args.group
    if args.group_size is not None:
        env["ACB_GROUP_SIZE"] = str(args.group_size)
    if args.auth_token_file:
        env["ACB_AUTH_TOKEN_FILE"] = os.path.abspath(args.auth_token_file)
    env["ACB_MODE"] = args.mode
    if args.idle_ms is not None:
        if args.idle_ms < 0:
            print("agarun: --idle-ms cannot be negative", file=sys.stderr)
            return 2
        if args.mode != "auto":
            print("agarun: --idle-ms is for --mode auto (manual mode ends phases itself)", file=sys.stderr)
            return 2
        env["ACB_IDLE_MS"] = str(args.idle_ms)
    if args.eager:
        env["ACB_EAGER_RELEASE"] = "1"
    if args.mode == "auto":
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_auto")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        preload = _interposer()
        if preload is None:
            print("agarun: --mode auto: libacb_preload.so (the CUDA interposer) was not found beside libacb "
                  "(or in ACB_PRELOAD_LIBRARY): only PyTorch programs get automatic mode, through "
                  "PyTorch's dispatch mode", file=sys.stderr)
        else:
            # The interposer gates the program's CUDA driver calls; libacb is preloaded with it so
            # that there is one libacb in the process (the Python package loads the same file).
            libs = [preload[0], preload[1]]
            if env.get("LD_PRELOAD"):
                libs.append(env["LD_PRELOAD"])
            env["LD_PRELOAD"] = " ".join(libs)
            env["ACB_LIBRARY"] = preload[1]
    marks = None
    if args.profile:
        out_dir = os.path.dirname(os.path.abspath(args.profile))
        if not os.path.isdir(out_dir):
            print(f"agarun: --profile {args.profile}: no directory {out_dir}", file=sys.stderr)
            return 2
        fd, marks = tempfile.mkstemp(prefix="acb-profile-", suffix=".jsonl")
        os.close(fd)
        env["ACB_PROFILE"] = marks
    launched = time.time_ns()
    try:
        child = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        print(f"agarun: {command[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"agarun: {command[0]}: permission denied", file=sys.stderr)
        return 126

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    code = child.wait()
    code = 128 - code if code < 0 else code
    if marks is not None:
        try:
            _write_profile(marks, launched, time.time_ns(), args)
        finally:
            os.unlink(marks)
    return code


def _interposer() -> Optional[tuple]:
    """(libacb_preload.so, libacb.so) for `--mode auto`, or None if either is missing."""
    from acb_broker import _ffi

    try:
        lib = os.path.abspath(_ffi._find_library())
    except ImportError:
        return None
    import glob

    env = os.environ.get("ACB_PRELOAD_LIBRARY")
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [env] if env else ([os.path.join(os.path.dirname(lib), "libacb_preload.so")]
                                    + sorted(glob.glob(os.path.join(here, "libacb_preload*.so"))))
    for c in candidates:
        if c and os.path.exists(c):
            return (os.path.abspath(c), lib)
    return None


def _write_profile(marks: str, launched: int, exited: int, args: argparse.Namespace) -> None:
    """Turns libacb's marks into the trace file and prints what they say (on stderr, so the
    command's own output stays as it was)."""
    from acb_broker import profile

    jobs = profile.profiles(profile.read_marks(marks), launched, exited)
    if not jobs:
        print("agarun: profile: the command had no GPU phase through libacb (manual mode needs "
              "on_device_begin/on_device_end; auto mode, a CUDA operation in PyTorch); no trace written", file=sys.stderr)
        return
    # The memory in the trace is what a swap moves: the peak swappable memory libacb measured,
    # not --memory (the size asked for, a fence) nor the grant's fence.
    tmp = args.profile + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(profile.trace(jobs), f, indent=2)
        f.write("\n")
    os.replace(tmp, args.profile)
    print(f"agarun: profile of {len(jobs)} job(s), written to {args.profile}", file=sys.stderr)
    print(profile.summary(jobs), file=sys.stderr)
    print(f"agarun: predict what acb does with several such jobs (raise \"count\" in the trace): "
          f"acb-assigner simulate --trace {args.profile} --gpus fake:1x80GiB --scheduler all", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
