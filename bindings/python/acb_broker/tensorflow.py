"""acb.tensorflow: TensorFlow programs on brokered GPUs, in manual mode::

    import acb_broker as acb
    import acb_broker.tensorflow
    with acb.tensorflow.on_device() as device_name:     # '/GPU:k', the granted GPU
        with tf.device(device_name):
            model.fit(...)

What TensorFlow does not give back: its GPU allocator keeps the device memory it has taken
until the process ends, and acb cannot move TensorFlow's tensors to host memory. So a
TensorFlow job's GPU memory stays on its GPU between phases: acb shares the GPU's time, not
its memory. To let several TensorFlow jobs share one GPU, run the assigner with
`--scheduler gpu-sharing`, ask for `memory=` per phase, and call `limit_memory()` with the same
size before TensorFlow first touches the GPU; acb turns on memory growth for you otherwise (so
a job takes what it uses, not the whole GPU).
"""
import os
from contextlib import contextmanager
from typing import Iterator, List, Optional, Union

import acb_broker as acb
from acb_broker._error import no_cuda

__all__ = ["on_device", "limit_memory"]

_configured = False


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("acb.tensorflow needs TensorFlow (pip install tensorflow)") from e
    return tf


def limit_memory(memory: Union[int, str]) -> None:
    """Caps TensorFlow at `memory` (bytes or '20GiB') on every GPU it sees. Must come before
    TensorFlow first uses a GPU (TensorFlow's rule)."""
    global _configured
    tf = _tf()
    mib = max(1, acb.parse_size(memory) >> 20)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=mib)])
        except RuntimeError as e:
            raise RuntimeError(
                f"acb.tensorflow.limit_memory() must come before TensorFlow first uses a GPU: {e}") from None
    _configured = True


def _grow_on_demand(tf, gpus) -> None:
    """Memory growth on every GPU, once, unless the program configured TensorFlow itself."""
    global _configured
    if _configured:
        return
    _configured = True
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            return  # TensorFlow is already initialized, or configured otherwise: leave it be


def _device_names(tf, lease: acb.Lease) -> List[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise no_cuda("TensorFlow sees no GPU (no driver, a CPU-only build, or CUDA_VISIBLE_DEVICES "
                       "hides them): the granted GPU cannot be used from this process")
    _grow_on_demand(tf, gpus)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        raise no_cuda(
            "CUDA_VISIBLE_DEVICES is set, so TensorFlow's GPU numbers are not the node's: unset it "
            "and let acb choose (it names the granted GPU by its node index)")
    names = []
    for d in lease.devices:
        if d.index >= len(gpus):
            raise no_cuda(f"the granted GPU {d.index} ({d.uuid}) is not among the {len(gpus)} GPU(s) "
                           "TensorFlow sees")
        names.append(f"/GPU:{d.index}")
    return names


@contextmanager
def on_device(
    gpus: Optional[int] = None,
    memory: Union[int, str, None] = None,
    timeout: Optional[float] = None,
    priority: int = 0,
    client: Optional[acb.Client] = None,
) -> Iterator[Union[str, List[str]]]:
    """A GPU phase: waits for a grant, yields the granted GPU's TensorFlow name ('/GPU:k'; a
    list of names when more than one GPU is asked for), ends the phase on exit. Raises NoCuda,
    having ended the phase, when TensorFlow cannot see the granted GPU."""
    tf = _tf()
    lease, end = acb._begin(client, gpus, memory, timeout, priority)
    try:
        names = _device_names(tf, lease)
        yield names[0] if len(names) == 1 else names
    finally:
        end()
