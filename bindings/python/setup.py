"""Builds libacb (the acb-ffi crate) with cargo and ships it inside the `acb` package, beside
the generated C header the Python declarations are read from."""
import os
import shutil

from setuptools import setup
from setuptools_rust import Binding, RustExtension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# The header travels with the package: acb/_ffi.py derives every signature from it.
shutil.copyfile(os.path.join(ROOT, "include", "acb.h"), os.path.join(HERE, "acb", "acb.h"))

setup(
    rust_extensions=[
        RustExtension(
            "acb._libacb",
            path=os.path.join(ROOT, "acb-ffi", "Cargo.toml"),
            binding=Binding.NoBinding,
            py_limited_api=False,
        )
    ],
)
