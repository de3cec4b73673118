"""Two ways to build the package.

- From source (`pip install ./bindings/python`): builds libacb (the acb-ffi crate) with cargo,
  through setuptools-rust, and ships it inside the `acb_broker` package. Needs a Rust toolchain; it
  takes minutes (`pip install -v` shows cargo's progress). It does not build the daemon.
- A binary wheel (`bindings/python/build-wheel.sh`): with `ACB_PREBUILT=DIR` naming a folder
  that holds a release `libacb.so` and `acb-assigner`, nothing is compiled: both are copied in,
  libacb into the package and acb-assigner as a command, and the wheel is tagged for the
  platform (py3-none-linux_x86_64; auditwheel then makes it manylinux). Installing that wheel
  gives the whole system, daemon included, with no Rust.

Either way the generated C header travels with the package: acb_broker/_ffi.py derives every
signature from it.
"""
import glob
import os
import shutil
import sys

from setuptools import setup
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

shutil.copyfile(os.path.join(ROOT, "include", "acb.h"), os.path.join(HERE, "acb_broker", "acb.h"))
PREBUILT = os.environ.get("ACB_PREBUILT")


def prebuilt_setup(folder: str) -> None:
    from wheel.bdist_wheel import bdist_wheel

    lib = os.path.join(folder, "libacb.so")
    daemon = os.path.join(folder, "acb-assigner")
    for f in (lib, daemon):
        if not os.path.isfile(f):
            sys.exit(f"ACB_PREBUILT={folder}: no {os.path.basename(f)} there "
                     "(cargo build --release -p acb-ffi -p acb-assigner makes both in target/release)")
    for old in glob.glob(os.path.join(HERE, "acb_broker", "_libacb*")):
        os.remove(old)
    # A source build leaves its own libacb (_libacb.cpython-*.so) in build/lib, which setuptools
    # would ship beside this one: start from an empty build folder.
    shutil.rmtree(os.path.join(HERE, "build"), ignore_errors=True)
    shutil.copyfile(lib, os.path.join(HERE, "acb_broker", "_libacb.so"))
    # The CUDA interposer, for `agarun --mode auto` (without it agarun says so, and only PyTorch
    # programs get automatic mode, through the dispatch-mode fallback).
    preload = os.path.join(folder, "libacb_preload.so")
    for old in glob.glob(os.path.join(HERE, "acb_broker", "libacb_preload*")):
        os.remove(old)
    if os.path.isfile(preload):
        shutil.copyfile(preload, os.path.join(HERE, "acb_broker", "libacb_preload.so"))
    else:
        print(f"acb: no libacb_preload.so in {folder}: the wheel has no CUDA interposer "
              "(cargo build --release -p acb-preload makes it)", file=sys.stderr)
    scripts = os.path.join(HERE, "build", "prebuilt-scripts")
    os.makedirs(scripts, exist_ok=True)
    shutil.copy2(daemon, os.path.join(scripts, "acb-assigner"))

    class BinaryDistribution(Distribution):
        def has_ext_modules(self):
            return True

    class PlatformWheel(bdist_wheel):
        """ctypes, not the CPython API: any Python 3, one platform."""

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    setup(
        distclass=BinaryDistribution,
        cmdclass={"bdist_wheel": PlatformWheel},
        # A binary in the environment's bin/ (setuptools' scripts= would read it as Python).
        data_files=[("bin", [os.path.relpath(os.path.join(scripts, "acb-assigner"), HERE)])],
    )


def source_setup() -> None:
    # A copy a prebuilt build left here must not ship instead of the one cargo builds now.
    for old in glob.glob(os.path.join(HERE, "acb_broker", "_libacb*")) + glob.glob(
        os.path.join(HERE, "acb_broker", "libacb_preload*")
    ):
        os.remove(old)
    if shutil.which("cargo") is None:
        sys.exit(
            "acb: building from source needs a Rust toolchain (cargo, https://rustup.rs), which builds "
            "libacb (a few minutes; pip install -v shows it). A binary wheel needs none: "
            "bindings/python/build-wheel.sh makes one (see the README's 'Python packaging')."
        )
    from setuptools_rust import Binding, RustExtension

    setup(
        rust_extensions=[
            RustExtension(
                "acb_broker._libacb",
                path=os.path.join(ROOT, "acb-ffi", "Cargo.toml"),
                binding=Binding.NoBinding,
                py_limited_api=False,
            ),
            # The CUDA interposer agarun --mode auto preloads (acb_broker/libacb_preload*.so).
            RustExtension(
                "acb_broker.libacb_preload",
                path=os.path.join(ROOT, "acb-preload", "Cargo.toml"),
                binding=Binding.NoBinding,
                py_limited_api=False,
            ),
        ],
    )


if PREBUILT:
    prebuilt_setup(PREBUILT)
else:
    source_setup()
