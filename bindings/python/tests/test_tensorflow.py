"""acb.tensorflow's manual mode against a real assigner. TensorFlow itself is not installed in
CI (its wheel is hundreds of megabytes), so the first tests stand a small stand-in module in
for it that records what acb asks of TensorFlow's config API (the GPUs it lists, memory growth,
memory limits); the last runs with the real TensorFlow when it is installed."""
import os
import sys
import types

import pytest

import acb_broker as acb
import acb_broker.tensorflow as acb_tf

ASSIGNER = os.environ.get("ACB_TEST_ASSIGNER")
needs_assigner = pytest.mark.skipif(ASSIGNER is None, reason="ACB_TEST_ASSIGNER not set")


class _Config:
    """The parts of tf.config acb uses, over `n` GPUs; `initialized` as after the first GPU use."""

    def __init__(self, n, initialized=False):
        self.gpus = [f"/physical_device:GPU:{i}" for i in range(n)]
        self.initialized = initialized
        self.growth, self.limits = {}, {}
        self.experimental = types.SimpleNamespace(set_memory_growth=self._growth)
        self.LogicalDeviceConfiguration = lambda memory_limit: memory_limit

    def list_physical_devices(self, kind):
        assert kind == "GPU"
        return list(self.gpus)

    def _growth(self, gpu, on):
        if self.initialized:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth[gpu] = on

    def set_logical_device_configuration(self, gpu, confs):
        if self.initialized:
            raise RuntimeError("Virtual devices cannot be modified after being initialized")
        self.limits[gpu] = confs


@pytest.fixture
def fake_tf(monkeypatch):
    def make(n, initialized=False):
        tf = types.ModuleType("tensorflow")
        tf.config = _Config(n, initialized)
        monkeypatch.setitem(sys.modules, "tensorflow", tf)
        monkeypatch.setattr(acb_tf, "_configured", False)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return tf
    return make


def _holders(client, job):
    return [g["index"] for g in client.status()["gpus"] if any(h["job"] == job for h in g.get("holders", []))]


@needs_assigner
def test_a_phase_yields_the_granted_gpu_and_turns_memory_growth_on(fake_tf):
    tf = fake_tf(2)
    with acb.Client(assigner=ASSIGNER, job="tf-manual") as c:
        with acb_tf.on_device(client=c) as name:
            held = _holders(c, "tf-manual")
            assert len(held) == 1 and name == f"/GPU:{held[0]}"
        with pytest.raises(acb.NotActive):
            c.on_device_end()
    assert tf.config.growth == {g: True for g in tf.config.gpus}
    # A gang (gpu-affinity) is named GPU by GPU; a GPU TensorFlow does not see is refused.
    gang = acb.Lease(7, [acb.Device(1, "GPU-b"), acb.Device(0, "GPU-a")], 0)
    assert acb_tf._device_names(tf, gang) == ["/GPU:1", "/GPU:0"]
    with pytest.raises(acb.NoCuda, match="not among the 2"):
        acb_tf._device_names(tf, acb.Lease(8, [acb.Device(2, "GPU-c")], 0))


@needs_assigner
def test_no_gpu_in_tensorflow_raises_no_cuda_and_ends_the_phase(fake_tf, monkeypatch):
    fake_tf(0)
    with acb.Client(assigner=ASSIGNER, job="tf-nogpu") as c:
        with pytest.raises(acb.NoCuda, match="TensorFlow sees no GPU"):
            with acb_tf.on_device(client=c):
                pytest.fail("the block must not run")
        with pytest.raises(acb.NotActive):  # the phase was ended
            c.on_device_end()
    fake_tf(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with acb.Client(assigner=ASSIGNER, job="tf-cvd") as c:
        with pytest.raises(acb.NoCuda, match="CUDA_VISIBLE_DEVICES"):
            with acb_tf.on_device(client=c):
                pytest.fail("the block must not run")


def test_limit_memory_before_and_after_tensorflow_starts(fake_tf):
    tf = fake_tf(2)
    acb_tf.limit_memory("20GiB")
    assert tf.config.limits == {g: [20 * 1024] for g in tf.config.gpus}
    with pytest.raises(ValueError):
        acb_tf.limit_memory("lots")
    fake_tf(1, initialized=True)
    with pytest.raises(RuntimeError, match="before TensorFlow first uses a GPU"):
        acb_tf.limit_memory("1GiB")


def test_without_tensorflow_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install tensorflow"):
        with acb_tf.on_device(client=acb.Client(assigner="unix:/nonexistent")):
            pass


@needs_assigner
def test_with_the_real_tensorflow_and_no_gpu_it_says_so():
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has CUDA")
    with acb.Client(assigner=ASSIGNER, job="tf-real") as c:
        with pytest.raises(acb.NoCuda):
            with acb_tf.on_device(client=c):
                pass
