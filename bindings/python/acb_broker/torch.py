"""acb.torch: PyTorch programs on brokered GPUs.

Manual mode: name what the GPU phase needs; it is on the granted GPU inside the block and in
pinned host memory outside it::

    import acb_broker as acb
    import acb_broker.torch
    with acb.torch.on_device(model, optimizer) as device:
        loss = model(batch.to(device)).sum()
        loss.backward()
        optimizer.step()

Auto mode: no change to the program. `agarun --mode auto -- python train.py`, or, before the
program's first CUDA use::

    acb.torch.enable_auto(idle_ms=200)

Then every CUDA allocation of the process is libacb swappable memory (PyTorch's pluggable
allocator), every operation on a CUDA tensor is gated (the first one after a release waits for
a GPU and for the process's memory to come back, at the same addresses), and when no CUDA
operation came for `idle_ms` the GPU is given back (lazily: kept until another job waits; or
eagerly). Without CUDA, auto mode says so once and the program runs unbrokered.
"""
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import acb_broker as acb
from acb_broker import _ffi
from acb_broker._error import no_cuda

__all__ = ["on_device", "lease", "enable_auto", "disable_auto", "auto_enabled", "torch_device"]


# ---------------------------------------------------------------------------------------------
# Manual mode


def _norm_uuid(u: str) -> str:
    u = str(u).strip().lower()
    return u[4:] if u.startswith("gpu-") else u


def torch_device(device: acb.Device) -> torch.device:
    """The torch device of a granted GPU: matched by UUID against what this process sees (so
    CUDA_VISIBLE_DEVICES and CUDA's device order do not matter), else by index when this
    process sees every GPU of the node."""
    if not torch.cuda.is_available():
        raise no_cuda(
            "PyTorch sees no CUDA device (torch.cuda.is_available() is False): the granted GPU "
            f"{device.index} ({device.uuid}) cannot be used from this process",
        )
    want = _norm_uuid(device.uuid)
    count = torch.cuda.device_count()
    for i in range(count):
        if _norm_uuid(torch.cuda.get_device_properties(i).uuid) == want:
            return torch.device("cuda", i)
    if "CUDA_VISIBLE_DEVICES" not in os.environ and device.index < count:
        return torch.device("cuda", device.index)
    raise no_cuda(
        f"the granted GPU {device.index} ({device.uuid}) is not among the {count} CUDA device(s) "
        f"this process sees (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
    )


def _tensors_of(obj, out: List[tuple]) -> None:
    """Collects (owner, key) slots of every tensor `obj` holds, to be replaced in place. Modules
    are handled by `Module.to` (which keeps parameter objects); everything else here."""
    if isinstance(obj, torch.nn.Module):
        out.append(("module", obj))
    elif isinstance(obj, torch.Tensor):
        out.append(("tensor", obj))
    elif isinstance(obj, torch.optim.Optimizer):
        for param_state in obj.state.values():
            for k, v in param_state.items():
                # 'step' stays where the optimizer keeps it (on the CPU unless capturable or
                # fused), as Optimizer.load_state_dict does.
                if isinstance(v, torch.Tensor) and k != "step":
                    out.append(("slot", param_state, k))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out.append(("slot", obj, k))
            else:
                _tensors_of(v, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, torch.Tensor):
                out.append(("slot", obj, i))
            else:
                _tensors_of(v, out)
    elif isinstance(obj, tuple):
        for v in obj:
            _tensors_of(v, out)
    else:
        raise TypeError(
            "acb.torch.on_device moves modules, tensors, optimizers, and lists, tuples and dicts "
            f"of them, not {type(obj).__name__}"
        )


def _slots(objs) -> List[tuple]:
    slots: List[tuple] = []
    for o in objs:
        _tensors_of(o, slots)
    return slots


def _moved(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if device.type == "cpu" and pin and t.device.type != "cpu":
        host = torch.empty_like(t, device="cpu", pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host
    return t.to(device, non_blocking=True)


def _move(slots: List[tuple], device: torch.device, pin: bool) -> None:
    """Moves every slot's tensors to `device` in place: the Python objects the program holds
    (parameters, tensors, optimizer state) stay the same objects. Host copies are pinned when
    `pin` (PyTorch's host allocator caches pinned blocks, so the next release reuses them)."""
    def in_place(t: torch.Tensor) -> None:
        t.data = _moved(t.data, device, pin)
        if t.grad is not None:
            t.grad.data = _moved(t.grad.data, device, pin)

    for slot in slots:
        if slot[0] == "module":
            for t in list(slot[1].parameters()) + list(slot[1].buffers()):
                in_place(t)
        elif slot[0] == "tensor":
            in_place(slot[1])
        else:
            _, owner, key = slot
            owner[key] = _moved(owner[key], device, pin)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def on_device(
    *objs,
    gpus: Optional[int] = None,
    memory: Union[int, str, None] = None,
    timeout: Optional[float] = None,
    priority: int = 0,
    client: Optional[acb.Client] = None,
) -> Iterator[torch.device]:
    """A GPU phase for `objs` (modules, tensors, optimizers, or containers of them): waits for a
    grant, moves them onto the granted GPU in place, yields its torch.device, and on exit moves
    them back to pinned host memory, frees PyTorch's cached GPU memory and ends the phase. The
    client is the default one (ACB_ASSIGNER, ACB_JOB_ID) unless `client` is given. With
    `gpus` > 1 the objects go to the first granted GPU; `acb.torch.lease()` names them all."""
    slots = _slots(objs)  # TypeError before anything is asked of the assigner
    lease, end = acb._begin(client, gpus, memory, timeout, priority)
    _phases.__dict__.setdefault("leases", []).append(lease)
    try:
        device = _device_of(lease)
        try:
            _move(slots, device, pin=False)
            _sync(device)
            with _current(device):
                yield device
        finally:
            _sync(device)
            # Collected again: the block may have made tensors (an optimizer's first step makes
            # its state), and they leave the GPU too.
            _move(_slots(objs), torch.device("cpu"), pin=device.type == "cuda")
            _sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next holder gets the memory, not our cache
    finally:
        _phases.leases.pop()
        end()


_phases = threading.local()


def lease() -> Optional[acb.Lease]:
    """The lease of this thread's innermost `on_device` block (its GPUs' node indexes and
    UUIDs), or None outside one."""
    leases = getattr(_phases, "leases", None)
    return leases[-1] if leases else None


def _simulated() -> bool:
    """ACB_TORCH_DEVICE=cpu: the CPU stands in for the granted GPU (tests and demos without one)."""
    d = os.environ.get("ACB_TORCH_DEVICE") or "cuda"
    if d not in ("cuda", "cpu"):
        raise ValueError(f"ACB_TORCH_DEVICE={d!r}: expected cuda, or cpu (a SIMULATED GPU)")
    return d == "cpu"


def _device_of(lease: acb.Lease) -> torch.device:
    if _simulated():
        return torch.device("cpu")
    return torch_device(lease.devices[0])


@contextmanager
def _current(device: torch.device):
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------
# Auto mode


def _touches(device_type: str, args, kwargs) -> bool:
    """Whether an operation's arguments name a tensor or a device of `device_type` (one level
    into lists and tuples: aten ops take tensors directly or in a list)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type == device_type:
                return True
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor) and b.device.type == device_type:
                    return True
    if kwargs:
        d = kwargs.get("device")
        if d is not None and torch.device(d).type == device_type:
            return True
        for v in kwargs.values():
            if isinstance(v, torch.Tensor) and v.device.type == device_type:
                return True
    return False


class _Gate:
    """Holds the GPU while operations come, gives it back after `idle_ms` without one."""

    def __init__(self, client: acb.Client, idle_ms: int, device_type: str = "cuda"):
        self.client = client
        self.idle_s = idle_ms / 1000.0
        self.device_type = device_type
        self.lock = threading.Lock()
        self.held = False
        self.inflight = 0
        self.last = time.monotonic()
        self.acquisitions = 0
        self.releases = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._idle_loop, name="acb-idle", daemon=True)
        self._thread.start()

    def enter(self) -> None:
        with self.lock:
            if not self.held:
                # agarun's --gpus and --memory (ACB_GPUS, ACB_MEMORY) say what a phase asks for.
                lease = self.client.on_device_begin(*acb._env_defaults(None, None))
                if self.acquisitions == 0 and self.device_type == "cuda":
                    # The first grant, before the program's first CUDA allocation: PyTorch's
                    # "cuda" becomes the granted GPU; the client is pinned to it from now on.
                    try:
                        torch.cuda.set_device(torch_device(lease.devices[0]))
                    except BaseException:
                        self.client.on_device_end()
                        raise
                self.held = True
                self.acquisitions += 1
            self.inflight += 1

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1
            self.last = time.monotonic()

    def release(self) -> bool:
        """Ends the phase now if no operation is running: True if it did."""
        with self.lock:
            if not self.held or self.inflight:
                return False
            if self.device_type == "cuda":
                torch.cuda.synchronize()  # kernels still queued must finish before the swap-out
            self.client.on_device_end()
            self.held = False
            self.releases += 1
            return True

    def _idle_loop(self) -> None:
        tick = max(self.idle_s / 4, 0.001)
        failures = 0
        while not self._stop.wait(tick * (1 << min(failures, 10))):
            if self.held and not self.inflight and time.monotonic() - self.last >= self.idle_s:
                try:
                    self.release()
                    failures = 0
                except Exception as e:  # a CUDA error too: this thread must not die holding the GPU
                    if failures == 0:
                        print(f"acb auto mode: releasing the GPU failed ({type(e).__name__}: {e}); "
                              "retrying, less and less often", file=sys.stderr)
                    failures += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.release()
        except Exception as e:
            print(f"acb auto mode: releasing the GPU failed: {e}", file=sys.stderr)


class _GateMode(TorchDispatchMode):
    """Every aten operation passes here; those on the gated device go through the gate."""

    def __init__(self, gate: _Gate):
        super().__init__()
        self.gate = gate

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        gate = self.gate
        if not _touches(gate.device_type, args, kwargs):
            return func(*args, **(kwargs or {}))
        gate.enter()
        try:
            return func(*args, **(kwargs or {}))
        finally:
            gate.leave()


_auto = None  # (gate, mode, client, the enabling thread) while auto mode is on
_interposer_on = False  # auto mode left to libacb_preload.so (the CUDA interposer)
_warned = False


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"acb auto mode: {message}; the program runs without acb", file=sys.stderr)


def auto_enabled() -> bool:
    return _auto is not None or _interposer_on


def _interposer_loaded() -> bool:
    """Whether libacb_preload.so (the CUDA interposer) is loaded in this process, in automatic
    mode (`agarun --mode auto` preloads it and sets ACB_MODE=auto)."""
    if os.environ.get("ACB_MODE") != "auto":
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(line.rstrip().endswith("libacb_preload.so") for line in f)
    except OSError:
        return False


def enable_auto(idle_ms: Optional[int] = None, eager: Optional[bool] = None,
                client: Optional[acb.Client] = None, *, _device_type: Optional[str] = None) -> bool:
    """Turns auto mode on for this process; True if it is on. Must come before the first CUDA
    allocation (PyTorch's allocator cannot be changed after). `idle_ms` (default ACB_IDLE_MS,
    else 200) is how long without a CUDA operation before the GPU is given back; `eager`
    (default: ACB_EAGER_RELEASE) gives it back at once rather than when another job waits.
    Without CUDA it prints one warning and returns False: the program runs unbrokered.

    ACB_TORCH_DEVICE=cpu is for tests and demos on machines without a GPU: the CPU stands in for
    the granted GPU (operations on CPU tensors are gated; memory is PyTorch's own), and auto
    mode says so: SIMULATED. (Manual mode then yields the CPU device.)"""
    global _auto, _interposer_on
    if _auto is not None or _interposer_on:
        return True
    if _device_type is None:
        _device_type = "cpu" if _simulated() else "cuda"
        if _device_type == "cpu":
            print("acb auto mode: SIMULATED GPU: operations on CPU tensors are gated as if the CPU "
                  "were the granted GPU (ACB_TORCH_DEVICE=cpu)", file=sys.stderr)
    if idle_ms is None:
        idle_ms = _env_int("ACB_IDLE_MS", 200)
    if isinstance(idle_ms, bool) or not isinstance(idle_ms, int) or idle_ms < 0:
        raise ValueError(f"idle_ms is a number of milliseconds (0 or more), not {idle_ms!r}")
    if _device_type == "cuda" and _interposer_loaded():
        # libacb_preload.so gates this process's CUDA driver calls and gives it libacb's memory:
        # nothing for PyTorch's dispatch mode to do (and no per-operation Python cost).
        _interposer_on = True
        return True
    if _device_type == "cuda":
        if not torch.cuda.is_available():
            _warn_once("PyTorch sees no CUDA device (no GPU, no driver, or a CPU-only build)")
            return False
        print("acb auto mode: gating through PyTorch's dispatch mode (the fallback: libacb_preload.so, "
              "the CUDA interposer, is not loaded; run under `agarun --mode auto` to use it)", file=sys.stderr)
        if torch.cuda.is_initialized():
            raise RuntimeError(
                "acb.torch.enable_auto() must come before the program's first CUDA use: "
                "PyTorch's allocator cannot be changed after it; call it at the top of the "
                "program, or run the program under `agarun --mode auto`"
            )
        if client is None:
            try:
                # Pinned: the process's memory and its tensors' device stay on its first GPU.
                client = acb.Client(eager=eager, memory_backend="cuda", pin_gpus=True)
            except acb.NoCuda as e:
                _warn_once(str(e))
                return False
        allocator = torch.cuda.memory.CUDAPluggableAllocator(
            # PyTorch does not check for NULL: the variant that says why and aborts instead.
            _ffi.LIBRARY_PATH, "acb_allocator_malloc_or_abort", "acb_allocator_free")
        acb.check(_ffi.lib.acb_allocator_set_client(client._handle()))
        torch.cuda.memory.change_current_allocator(allocator)
    elif client is None:
        client = acb.Client(eager=eager)
    gate = _Gate(client, idle_ms, _device_type)
    mode = _GateMode(gate)
    mode.__enter__()
    _auto = (gate, mode, client, threading.get_ident())
    return True


def disable_auto() -> None:
    """Stops gating and gives the GPU back, from the thread that enabled auto mode (PyTorch's
    dispatch modes are per thread). For tests: PyTorch keeps the allocator it was given, so
    after this, CUDA allocations fail as out of memory (libacb allocates in GPU phases only)."""
    global _auto, _interposer_on
    _interposer_on = False  # the interposer itself gates at the driver for the process's life
    if _auto is None:
        return
    gate, mode, _client, thread = _auto
    if thread != threading.get_ident():
        raise RuntimeError("acb.torch.disable_auto() must be called from the thread that enabled auto mode")
    _auto = None
    mode.__exit__(None, None, None)
    gate.close()


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} is not a whole number of milliseconds") from None
    if n < 0:
        raise ValueError(f"{name}={v!r} cannot be negative")
    return n
