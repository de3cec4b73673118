"""Fujitsu ACB's environment variables that are not about the assigner's address, read in one
place for agarun and adaptive_gpu_allocator. (AGA_GPU_ALLOC_SERVER_ADDRESS and
AGA_GPU_ALLOC_SERVER_PORT are read by libacb itself, where ACB_ASSIGNER is read.)

- AGA_REQUEST_DEVICE=any|cuda|cpu: `cpu` runs the program unbrokered (no GPU is requested);
  `cuda` and `any` request a GPU (acb treats them alike). Unset: request a GPU.
- AGA_ENABLE_AUTO=1: agarun's auto mode (`agarun --mode auto`).
"""
import os
from typing import Mapping, Optional

REQUEST_DEVICES = ("any", "cuda", "cpu")


def request_device(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """AGA_REQUEST_DEVICE, lower-cased: 'any', 'cuda' or 'cpu'; None when unset or empty.
    Anything else is a ValueError that says what is expected."""
    value = (os.environ if environ is None else environ).get("AGA_REQUEST_DEVICE", "")
    v = value.strip().lower()
    if not v:
        return None
    if v not in REQUEST_DEVICES:
        raise ValueError(f"AGA_REQUEST_DEVICE={value!r}: expected any, cuda or cpu")
    return v


def auto_enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """AGA_ENABLE_AUTO: 1/true/yes turn agarun's auto mode on; 0/false/no/empty/unset leave it
    off; anything else is a ValueError."""
    value = (os.environ if environ is None else environ).get("AGA_ENABLE_AUTO", "")
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("", "0", "false", "no"):
        return False
    raise ValueError(f"AGA_ENABLE_AUTO={value!r}: expected 1 or 0")
