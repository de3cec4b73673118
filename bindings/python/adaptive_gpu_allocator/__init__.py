"""adaptive_gpu_allocator: Fujitsu ACB's PyTorch client API, on acb.

A script written for Fujitsu's ACB runs unchanged::

    from adaptive_gpu_allocator import PyTorchAdaptiveGPUAllocator

    allocator = PyTorchAdaptiveGPUAllocator(model, optimizer, scheduler, device)
    for epoch in range(epochs):
        batches = prepare()                                  # CPU phase: the GPU serves others
        allocator.on_device_begin(memory_usage_hint=20 << 30)  # waits for a GPU; model and optimizer move there
        for x, y in batches:
            x, y = allocator.move_tensor_to_device(x), allocator.move_tensor_to_device(y)
            loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
        scheduler.step()
        allocator.on_device_end()                            # back to pinned host memory; the GPU is given back
    allocator.finalize()

It is a thin layer over `acb.torch.on_device` (manual mode): the same moves in place, the same
pinned host copies, the same granted-GPU lookup by UUID. Names and behaviour come from Fujitsu's
public documentation; where acb differs, the docstrings say so.

The environment: the assigner is ACB_ASSIGNER, else Fujitsu's AGA_GPU_ALLOC_SERVER_ADDRESS and
AGA_GPU_ALLOC_SERVER_PORT (tcp:ADDRESS:PORT), else acb's default socket. AGA_REQUEST_DEVICE=cpu
runs everything on the CPU with no assigner at all; `cuda` and `any` request a GPU; anything else
is a ValueError when the allocator is made. ACB_JOB_ID names the job, ACB_MEMORY is the default
memory hint, ACB_EAGER_RELEASE=1 gives the GPU back at once at each on_device_end (otherwise it
is kept until another job waits: lazy release).
"""
import os
from typing import Any, ContextManager, Optional, Union

import torch

import acb_broker as acb
import acb_broker.torch as _acb_torch
from acb_broker import _aga, _ffi

__all__ = ["PyTorchAdaptiveGPUAllocator", "PyTorchDDPAdaptiveGPUAllocator"]

_CPU = torch.device("cpu")


def _status(name: str) -> int:
    return _ffi.CONSTANTS[name]


class PyTorchAdaptiveGPUAllocator:
    """Fujitsu ACB's manual-mode allocator for one PyTorch job.

    `model` (a torch.nn.Module) and `optimizer` (or None) are moved onto the granted GPU at
    each on_device_begin and back to pinned host memory at each on_device_end, in place: the
    program keeps the same parameter and state objects. `scheduler` (an LR scheduler, or None)
    is kept for the program's sake; it holds no tensors, so nothing of it moves. `device` is the
    device the program meant to use: a CPU device (or AGA_REQUEST_DEVICE=cpu) runs unbrokered
    on the CPU; anything else (`cuda`, `cuda:0`, None) asks the assigner for a GPU. acb differs:
    the assigner chooses which GPU, so a device index here is not honoured.

    `client` (an acb.Client) and `job` (the job's name) are acb's own keywords.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 scheduler: Any = None, device: Union[str, torch.device, None] = None, *,
                 client: Optional[acb.Client] = None, job: Optional[str] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, not {type(optimizer).__name__}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        request = _aga.request_device()  # a ValueError for a bad AGA_REQUEST_DEVICE, before anything else
        wanted = torch.device(device) if device is not None else None
        self._brokered = request != "cpu" and not (request is None and wanted is not None and wanted.type == "cpu")
        self._client = None
        self._own_client = False
        if self._brokered:
            if client is None:
                client = acb.Client(job=job, **self._client_options())
                self._own_client = True
            self._client = client
        # the acb.torch.on_device context of the phase in progress
        self._phase: Optional[ContextManager[torch.device]] = None
        self._device = _CPU
        self._kept = False  # on_device_end(no_release=True) kept the phase going
        self._in_phase = False
        self._finalized = False

    def _client_options(self) -> dict:
        return {}

    @property
    def brokered(self) -> bool:
        """Whether GPUs come from the assigner (False under AGA_REQUEST_DEVICE=cpu or a CPU device)."""
        return self._brokered

    def on_device_begin(self, device: Union[str, torch.device, None] = None,
                        memory_usage_hint: Union[int, str, None] = None) -> torch.device:
        """Starts a GPU phase: waits for the assigner's grant, moves the model and the optimizer
        onto the granted GPU and returns its torch.device (see get_device).

        `memory_usage_hint` is the memory the phase needs on its GPU, in bytes or as a size
        ('20GiB'); acb uses it as the request's memory (under the gpu-sharing scheduler, the
        job's fence on the GPU). None: ACB_MEMORY, else a whole GPU. Fujitsu's documentation does
        not give the hint's unit; acb takes an int as bytes.

        `device`: a CPU device runs this phase on the CPU without asking for a GPU; otherwise the
        assigner chooses the GPU (an index is not honoured).

        After on_device_end(no_release=True), the phase goes on: nothing is asked or moved, and
        the same device is returned.
        """
        self._check_open()
        if self._kept:
            self._kept = False
            return self._device
        if self._in_phase:
            raise acb.AlreadyActive(_status("ACB_STATUS_ALREADY_ACTIVE"),
                                    "on_device_begin: a GPU phase is already active (call on_device_end first)")
        here = torch.device(device) if device is not None else None
        if not self._brokered or (here is not None and here.type == "cpu"):
            self._device = _CPU
            self._in_phase = True
            return self._device
        objs = [self.model] + ([self.optimizer] if self.optimizer is not None else [])
        phase = _acb_torch.on_device(*objs, memory=memory_usage_hint, client=self._client)
        self._device = phase.__enter__()
        self._phase = phase
        self._in_phase = True
        return self._device

    def on_device_end(self, no_release: bool = False) -> None:
        """Ends the GPU phase: synchronises, moves the model and the optimizer (with any state the
        phase made, such as an optimizer's first moments) to pinned host memory, empties
        PyTorch's GPU cache, and tells the assigner. Under acb's lazy release the GPU is kept
        until another job waits for it (ACB_EAGER_RELEASE=1: given back at once).

        `no_release=True` keeps the phase going instead: the model stays on the GPU and the GPU
        stays this job's, until the next on_device_begin (which then returns at once) and
        on_device_end, or finalize.
        """
        self._check_open()
        if not self._in_phase or self._kept:
            raise acb.NotActive(_status("ACB_STATUS_NOT_ACTIVE"), "on_device_end: no GPU phase is active")
        if no_release:
            self._kept = True
            return
        self._end_phase()

    def _end_phase(self) -> None:
        phase, self._phase = self._phase, None
        self._in_phase, self._kept = False, False
        self._device = _CPU
        if phase is not None:
            phase.__exit__(None, None, None)

    def move_tensor_to_device(self, tensor: Any) -> Any:
        """`tensor` on the current device (get_device()): a new tensor, as Tensor.to makes.
        Lists, tuples and dicts of tensors are moved element by element; anything else is
        returned as it is. The copies are the program's: drop them before on_device_end, or
        they keep GPU memory (acb moves only the model and the optimizer back to the host)."""
        device = self._device
        if isinstance(tensor, torch.Tensor):
            return tensor.to(device, non_blocking=device.type == "cuda")
        if isinstance(tensor, list):
            return [self.move_tensor_to_device(t) for t in tensor]
        if isinstance(tensor, tuple):
            moved = [self.move_tensor_to_device(t) for t in tensor]
            return type(tensor)(*moved) if hasattr(tensor, "_fields") else tuple(moved)  # namedtuples too
        if isinstance(tensor, dict):
            return {k: self.move_tensor_to_device(v) for k, v in tensor.items()}
        return tensor

    def get_device(self) -> torch.device:
        """The device to compute on: the granted GPU inside a phase (the CPU when it stands in:
        AGA_REQUEST_DEVICE=cpu, a CPU device, or acb's ACB_TORCH_DEVICE=cpu for tests), the CPU
        outside one (where the model then is)."""
        return self._device

    def finalize(self) -> None:
        """Ends a phase still going (the model comes back to host memory), and, for a client the
        allocator made, closes it: everything the job holds is released. Idempotent."""
        if self._finalized:
            return
        try:
            if self._in_phase:
                self._end_phase()
        finally:
            self._finalized = True
            if self._own_client and self._client is not None:
                self._client.close()
            self._client = None

    def _check_open(self) -> None:
        if self._finalized:
            raise ValueError("the allocator is finalized")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.finalize()


class PyTorchDDPAdaptiveGPUAllocator(PyTorchAdaptiveGPUAllocator):
    """The allocator for one rank of a DistributedDataParallel job: `world_size` ranks, this one
    `rank` (0 <= rank < world_size). The name is acb's: Fujitsu's documentation mentions a DDP
    variant taking world_size and rank but, in what is public, not its name.

    Each rank is a job of its own to the assigner, named JOB-rankR (JOB from `job`, else
    ACB_JOB_ID, else 'ddp'), and stays on the GPU of its first grant (acb's pin_gpus), since a
    process group is bound to its devices. Under torchrun (or in a Slurm step) the ranks are one
    group, granted together (libacb reads the launcher's environment; ACB_GROUP and
    ACB_GROUP_SIZE name one otherwise). Ranks started another way (mp.spawn) are not, and a rank
    that waits for a GPU keeps the others waiting in their collectives.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 scheduler: Any = None, device: Union[str, torch.device, None] = None,
                 world_size: int = 1, rank: int = 0, *, client: Optional[acb.Client] = None,
                 job: Optional[str] = None):
        for name, v in (("world_size", world_size), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, not {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be between 0 and world_size - 1 ({world_size - 1}), not {rank}")
        self.world_size, self.rank = world_size, rank
        base = job or os.environ.get("ACB_JOB_ID") or "ddp"
        super().__init__(model, optimizer, scheduler, device, client=client, job=f"{base}-rank{rank}")

    def _client_options(self) -> dict:
        return {"pin_gpus": True}
