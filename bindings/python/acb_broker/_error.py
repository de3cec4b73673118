"""Statuses become typed exceptions right after each call."""
import ctypes

from . import _ffi


class AcbError(Exception):
    """A libacb call failed. `status` is the acb_status number."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InvalidRequest(AcbError, ValueError):
    """An argument libacb refused (a malformed address, 0 GPUs, ...)."""


class AssignerUnavailable(AcbError, ConnectionError):
    """The assigner cannot be reached after the configured retries."""


class Timeout(AcbError, TimeoutError):
    """No GPU was granted within the timeout; the request was withdrawn."""


class AlreadyActive(AcbError):
    """on_device_begin while a GPU phase is already active."""


class NotActive(AcbError):
    """on_device_end without a GPU phase."""


class Rejected(AcbError):
    """The assigner refused the request (more GPUs or memory than it has, ...)."""


class PermissionDenied(AcbError, PermissionError):
    """The assigner refused this client's identity (auth token)."""


class LeaseRevoked(AcbError):
    """A GPU of the lease was lost while in use."""


class OutOfMemory(AcbError, MemoryError):
    """A device allocation would pass the lease's memory."""


class NoCuda(AcbError):
    """The CUDA memory backend was asked for, but there is no CUDA driver or GPU."""


class Forked(AcbError):
    """A client made before fork() was used in the child: make a new Client in the child."""


_BY_NAME = {
    "ACB_STATUS_INVALID_ARGUMENT": InvalidRequest,
    "ACB_STATUS_UNAVAILABLE": AssignerUnavailable,
    "ACB_STATUS_TIMEOUT": Timeout,
    "ACB_STATUS_ALREADY_ACTIVE": AlreadyActive,
    "ACB_STATUS_NOT_ACTIVE": NotActive,
    "ACB_STATUS_REJECTED": Rejected,
    "ACB_STATUS_PERMISSION_DENIED": PermissionDenied,
    "ACB_STATUS_LEASE_REVOKED": LeaseRevoked,
    "ACB_STATUS_OUT_OF_MEMORY": OutOfMemory,
    "ACB_STATUS_NO_CUDA": NoCuda,
    "ACB_STATUS_FORKED": Forked,
}
_BY_STATUS = {_ffi.CONSTANTS[name]: cls for name, cls in _BY_NAME.items()}
OK = _ffi.CONSTANTS["ACB_STATUS_OK"]


def _message(status: int) -> str:
    buf = ctypes.create_string_buffer(1024)
    n = ctypes.c_size_t(0)
    _ffi.lib.acb_error_message(buf, len(buf), ctypes.byref(n))
    if n.value == 0:
        _ffi.lib.acb_status_message(status, buf, len(buf), ctypes.byref(n))
    return buf.raw[: n.value].decode("utf-8", "replace")


def check(status: int) -> None:
    """Raises the exception for `status` unless it is ACB_STATUS_OK."""
    if status != OK:
        raise _BY_STATUS.get(status, AcbError)(status, _message(status))


def no_cuda(message: str) -> NoCuda:
    """The NoCuda a Python binding raises itself (a framework that sees no usable GPU)."""
    return NoCuda(_ffi.CONSTANTS["ACB_STATUS_NO_CUDA"], message)
