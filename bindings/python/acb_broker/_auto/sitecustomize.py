"""Imported by Python at start-up in programs run by `agarun --mode auto` (this folder is first
on their PYTHONPATH). When the program imports torch, acb.torch.enable_auto() runs right after,
before the program can touch CUDA. A program that never imports torch is left alone. Any
sitecustomize this one shadows is run too."""
import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


class _AfterTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _enable()

        spec.loader.exec_module = exec_module
        return spec


def _enable():
    try:
        import acb_broker as acb
        import acb_broker.torch

        acb.torch.enable_auto()
    except Exception as e:  # never take the program down: run it unbrokered, and say so
        print(f"acb auto mode: {type(e).__name__}: {e}; the program runs without acb", file=sys.stderr)


def _chain():
    """Runs the sitecustomize this one hides (the next one on sys.path), if there is one."""
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == _HERE:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_acb_chained_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("ACB_MODE") == "auto":
    if "torch" in sys.modules:
        _enable()
    else:
        sys.meta_path.insert(0, _AfterTorch())
_chain()
