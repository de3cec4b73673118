"""acb: the open GPU computing broker, from Python.

Manual mode (the white paper's names)::

    import acb_broker as acb
    with acb.Client() as client:              # ACB_ASSIGNER / ACB_JOB_ID from the environment
        with client.on_device(gpus=1) as lease:
            run_on_gpu(lease.devices[0].index)

    acb.on_device_begin()                     # on a default client made from the environment
    ...
    acb.on_device_end()

Everything is done by libacb (the C library); this package only declares its functions (read
from the generated acb.h) and turns statuses into exceptions.
"""
import atexit
import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

from . import _ffi
from ._error import (
    AcbError,
    AlreadyActive,
    AssignerUnavailable,
    Forked,
    InvalidRequest,
    LeaseRevoked,
    NoCuda,
    NotActive,
    OutOfMemory,
    PermissionDenied,
    Rejected,
    Timeout,
    check,
)
from ._units import UnitError, parse_size

__all__ = [
    "AcbError",
    "AlreadyActive",
    "AssignerUnavailable",
    "Client",
    "Device",
    "Forked",
    "InvalidRequest",
    "Lease",
    "LeaseRevoked",
    "NoCuda",
    "NotActive",
    "OutOfMemory",
    "PermissionDenied",
    "Rejected",
    "Timeout",
    "UnitError",
    "on_device",
    "on_device_begin",
    "on_device_end",
    "parse_size",
]

ABI_VERSION = _ffi.CONSTANTS["ACB_ABI_VERSION"]
_MAX_GROUP_SIZE = 4096  # acb_config_set_group's limit
_lib = _ffi.lib


def _seconds_to_ms(timeout: Optional[float]) -> int:
    if timeout is None:
        return 0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout is a number of seconds, not {type(timeout).__name__}")
    if timeout <= 0:
        raise ValueError("timeout must be positive (None waits as long as it takes)")
    return max(1, min(int(timeout * 1000), 2**32 - 1))


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")
    return value


@dataclass(frozen=True)
class Device:
    """A granted GPU: its node-local index (CUDA_VISIBLE_DEVICES) and uuid."""

    index: int
    uuid: str


@dataclass(frozen=True)
class Lease:
    """The GPUs of a granted phase."""

    id: int
    devices: List[Device]
    memory_per_gpu: int


def _lease_from(ptr: ctypes.c_void_p) -> Lease:
    try:
        devices = []
        for i in range(_lib.acb_lease_device_count(ptr)):
            index = ctypes.c_uint32(0)
            check(_lib.acb_lease_device_index(ptr, i, ctypes.byref(index)))
            buf = ctypes.create_string_buffer(256)
            n = ctypes.c_size_t(0)
            check(_lib.acb_lease_device_uuid(ptr, i, buf, len(buf), ctypes.byref(n)))
            devices.append(Device(index.value, buf.raw[: n.value].decode()))
        return Lease(_lib.acb_lease_id(ptr), devices, _lib.acb_lease_memory_per_gpu(ptr))
    finally:
        _lib.acb_lease_free(ptr)


class Client:
    """A client of the assigner: one job. `assigner` ('unix:/path' or 'tcp:IP:PORT') and `job`
    default to ACB_ASSIGNER and ACB_JOB_ID, `eager` (release at every phase end rather than
    when another job waits) to ACB_EAGER_RELEASE. `memory_backend` ('host' or 'cuda') is where the
    client's swappable memory lives (default: ACB_MEMORY_BACKEND, else host); 'cuda' raises
    NoCuda when there is no CUDA driver. `pin_gpus` (default ACB_PIN_GPUS) makes every phase
    after the first wait for the GPUs of the first. `group` and `group_size` make the client one
    member of a gang across processes, whose requests are granted together once `group_size`
    of them wait (default: ACB_GROUP and ACB_GROUP_SIZE, else the job of torchrun or the Slurm
    step that launched this process, when it has more than one; `group=''` for none). Close it
    (or use `with`) to release what it holds."""

    def __init__(
        self,
        assigner: Optional[str] = None,
        job: Optional[str] = None,
        *,
        eager: Optional[bool] = None,
        idle_timeout: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        connect_retries: Optional[int] = None,
        auth_token: Optional[str] = None,
        memory_backend: Optional[str] = None,
        pin_gpus: Optional[bool] = None,
        group: Optional[str] = None,
        group_size: Optional[int] = None,
    ):
        for name, v in (("assigner", assigner), ("job", job), ("auth_token", auth_token),
                        ("memory_backend", memory_backend), ("group", group)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str, not {type(v).__name__}")
        for name, flag in (("eager", eager), ("pin_gpus", pin_gpus)):
            if flag is not None and not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool")
        if group_size is not None:
            group_size = _check_int("group_size", group_size, 1, _MAX_GROUP_SIZE)
            if not group:
                raise ValueError("group_size needs a group (a non-empty group name)")
        elif group:
            raise ValueError(f"group {group!r} needs its group_size (how many processes it has)")
        self._ptr = None
        self._req: Optional[ctypes.c_void_p] = None
        self._req_key: Optional[Tuple[int, int, int, int]] = None
        cfg = ctypes.c_void_p()
        check(_lib.acb_config_new(ctypes.byref(cfg)))
        try:
            if assigner is not None:
                b = assigner.encode()
                check(_lib.acb_config_set_assigner(cfg, b, len(b)))
            if job is not None:
                b = job.encode()
                check(_lib.acb_config_set_job(cfg, b, len(b)))
            if group is not None:
                b = group.encode()
                check(_lib.acb_config_set_group(cfg, b, len(b), group_size or 0))
            if auth_token is not None:
                b = auth_token.encode()
                check(_lib.acb_config_set_auth_token(cfg, b, len(b)))
            if eager is not None:
                check(_lib.acb_config_set_eager_release(cfg, eager))
            if pin_gpus is not None:
                check(_lib.acb_config_set_pin_gpus(cfg, pin_gpus))
            if memory_backend is not None:
                b = memory_backend.encode()
                check(_lib.acb_config_set_memory_backend(cfg, b, len(b)))
            if idle_timeout is not None:
                check(_lib.acb_config_set_idle_timeout_ms(cfg, _seconds_to_ms(idle_timeout)))
            if connect_timeout is not None:
                check(_lib.acb_config_set_connect_timeout_ms(cfg, _seconds_to_ms(connect_timeout)))
            if connect_retries is not None:
                check(_lib.acb_config_set_connect_retries(cfg, _check_int("connect_retries", connect_retries, 0, 1000)))
            ptr = ctypes.c_void_p()
            check(_lib.acb_client_new(cfg, ctypes.byref(ptr)))
            self._ptr = ptr
        finally:
            _lib.acb_config_free(cfg)

    def _handle(self) -> ctypes.c_void_p:
        if self._ptr is None:
            raise ValueError("the client is closed")
        return self._ptr

    def on_device_begin(
        self,
        gpus: int = 1,
        memory: Union[int, str, None] = None,
        timeout: Optional[float] = None,
        priority: int = 0,
    ) -> Lease:
        """Blocks until `gpus` GPUs (with `memory` each, if given) are granted; returns the lease.
        Raises Timeout after `timeout` seconds (the request is withdrawn)."""
        gpus = _check_int("gpus", gpus, 1, 2**32 - 1)
        priority = _check_int("priority", priority, -(2**31), 2**31 - 1)
        mem = 0 if memory is None else parse_size(memory)
        if memory is not None and mem == 0:
            raise ValueError("memory must be more than 0 bytes (None asks for whole GPUs)")
        ms = _seconds_to_ms(timeout)
        client = self._handle()
        req = self._request(gpus, mem, priority, ms)
        lease = ctypes.c_void_p()
        check(_lib.acb_on_device_begin(client, req, ctypes.byref(lease)))
        return _lease_from(lease)

    def _request(self, gpus: int, mem: int, priority: int, ms: int) -> ctypes.c_void_p:
        # A job asks for the same thing phase after phase: keep the last request object rather
        # than build one with six calls into C per phase.
        key = (gpus, mem, priority, ms)
        if self._req is not None and self._req_key == key:
            return self._req
        req = ctypes.c_void_p()
        check(_lib.acb_request_new(ctypes.byref(req)))
        try:
            check(_lib.acb_request_set_gpus(req, gpus))
            check(_lib.acb_request_set_memory_per_gpu(req, mem))
            check(_lib.acb_request_set_priority(req, priority))
            check(_lib.acb_request_set_timeout_ms(req, ms))
        except BaseException:
            _lib.acb_request_free(req)
            raise
        if self._req is not None:
            _lib.acb_request_free(self._req)
        self._req, self._req_key = req, key
        return req

    def on_device_end(self) -> None:
        """Ends the GPU phase (the GPU is kept until someone waits, under lazy release)."""
        check(_lib.acb_on_device_end(self._handle()))

    @contextlib.contextmanager
    def on_device(self, gpus: int = 1, memory=None, timeout: Optional[float] = None, priority: int = 0) -> Iterator[Lease]:
        """A GPU phase as a `with` block: yields the lease, ends the phase on exit."""
        lease = self.on_device_begin(gpus=gpus, memory=memory, timeout=timeout, priority=priority)
        try:
            yield lease
        finally:
            self.on_device_end()

    def alloc(self, size: Union[int, str]) -> int:
        """Swappable device memory: `size` bytes on the GPU of the active phase (the memory
        backend's: ACB_MEMORY_BACKEND). Returns its address, valid until `free`, across swaps.
        Raises NotActive outside a GPU phase, OutOfMemory past the lease's memory."""
        n = parse_size(size)
        if n == 0:
            raise ValueError("an allocation needs at least one byte")
        ptr = ctypes.c_void_p()
        check(_lib.acb_client_alloc(self._handle(), n, ctypes.byref(ptr)))
        if ptr.value is None:
            raise AcbError(0, "libacb returned a null address for a successful allocation")
        return ptr.value

    def free(self, address: int) -> None:
        """Frees memory from `alloc`, resident or swapped out."""
        if isinstance(address, bool) or not isinstance(address, int) or address < 0:
            raise TypeError("an address is a non-negative int, from Client.alloc")
        check(_lib.acb_client_dealloc(self._handle(), ctypes.c_void_p(address)))

    def set_read_only(self, address: int, read_only: bool = True) -> None:
        """Marks an allocation read-only (weights): its host copy is kept across swaps."""
        if isinstance(address, bool) or not isinstance(address, int) or address < 0:
            raise TypeError("an address is a non-negative int, from Client.alloc")
        check(_lib.acb_client_set_read_only(self._handle(), ctypes.c_void_p(address), bool(read_only)))

    def memory_stats(self) -> dict:
        """The client's memory figures (acb_memory_stats): allocations, resident_bytes,
        swapped_bytes, swapped_out_total, swapped_in_total, host_pool_bytes."""
        stats = _ffi.STRUCTS["acb_memory_stats"]()
        check(_lib.acb_client_memory_stats(self._handle(), ctypes.byref(stats)))
        return {name: getattr(stats, name) for name, _ in stats._fields_}

    def status(self) -> dict:
        """What the assigner offers: its status (scheduler, GPUs, queue, clients)."""
        import json

        buf = ctypes.create_string_buffer(1 << 20)
        n = ctypes.c_size_t(0)
        check(_lib.acb_client_status_json(self._handle(), buf, len(buf), ctypes.byref(n)))
        return json.loads(buf.raw[: n.value].decode())

    def close(self) -> None:
        """Releases what the client holds and ends its session. Idempotent."""
        ptr, self._ptr = self._ptr, None
        req, self._req = getattr(self, "_req", None), None
        if req is not None:
            _lib.acb_request_free(req)
        if ptr is not None:
            _lib.acb_client_free(ptr)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_default: Optional[Client] = None
_default_lock = threading.Lock()


def _default_client() -> Client:
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
            atexit.register(_default.close)
        return _default


def _env_defaults(gpus, memory):
    if gpus is None:
        gpus = int(os.environ.get("ACB_GPUS", "1"))
    if memory is None and os.environ.get("ACB_MEMORY"):
        memory = os.environ["ACB_MEMORY"]
    return gpus, memory


def on_device_begin(gpus: Optional[int] = None, memory=None, timeout: Optional[float] = None, priority: int = 0) -> Lease:
    """The white paper's on_device_begin, on a default client made from the environment
    (ACB_ASSIGNER, ACB_JOB_ID; ACB_GPUS and ACB_MEMORY, as agarun sets them, are the defaults)."""
    gpus, memory = _env_defaults(gpus, memory)
    return _default_client().on_device_begin(gpus=gpus, memory=memory, timeout=timeout, priority=priority)


def on_device_end() -> None:
    """The white paper's on_device_end, on the default client."""
    _default_client().on_device_end()


@contextlib.contextmanager
def on_device(gpus: Optional[int] = None, memory=None, timeout: Optional[float] = None, priority: int = 0) -> Iterator[Lease]:
    """A GPU phase on the default client, as a `with` block."""
    gpus, memory = _env_defaults(gpus, memory)
    with _default_client().on_device(gpus=gpus, memory=memory, timeout=timeout, priority=priority) as lease:
        yield lease


def _begin(client: Optional[Client], gpus: Optional[int], memory, timeout: Optional[float], priority: int):
    """Begins a GPU phase on `client`, else on the default client with the environment's
    defaults: (the lease, the function that ends the phase). For the framework bindings."""
    if client is None:
        return on_device_begin(gpus=gpus, memory=memory, timeout=timeout, priority=priority), on_device_end
    lease = client.on_device_begin(gpus=1 if gpus is None else gpus, memory=memory, timeout=timeout, priority=priority)
    return lease, client.on_device_end
