"""Placeholder modules for imports that upstream's finetune.py chain makes but the probe never calls.

finetune.py imports TensorFlow, TFDS, dlimp (the RLDS pipeline), wandb, json_numpy and diffusers (the DDIM
head) (and jsonlines, for metrics files) at module level. The probe reads no dataset, logs nowhere
and has no diffusion head, so a module that is NOT installed is replaced by a placeholder whose every
attribute is an inert object. An installed module is always imported for real. Calls made at import
time (json_numpy.patch()) do nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

# Roots that finetune.py's import chain needs at import time only (moojink/openvla-oft @ 213c5ff).
IMPORT_ONLY = (
    "tensorflow",
    "tensorflow_datasets",
    "tensorflow_graphics",
    "dlimp",
    "wandb",
    "json_numpy",
    "diffusers",
    "jsonlines",
)


class _Inert:
    """Stands for any attribute of a placeholder module: it can be named, called, subclassed, used in a type
    annotation or a decorator at import time; it is falsy and does nothing."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> _Inert:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Inert(f"{self._path}.{name}")

    def __getitem__(self, key) -> _Inert:  # e.g. tf.Tensor[...] in an annotation
        return self

    def __or__(self, other):  # `X | None` in an annotation
        return self

    __ror__ = __or__

    def __call__(self, *args, **kwargs):
        # Decorators applied at import time (e.g. @tf.function) get the function back unchanged; any other
        # call (e.g. json_numpy.patch() at import) does nothing and returns another inert object.
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], _Inert):
            return args[0]
        return _Inert(f"{self._path}()")

    def __bool__(self) -> bool:
        return False

    def __mro_entries__(self, bases):  # `class X(tf.Module)` at import time
        return (object,)

    def __repr__(self) -> str:
        return f"<placeholder {self._path}>"


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Inert(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _PlaceholderModule(spec.name)
        m.__path__ = []  # a package, so `import a.b.c` resolves through this finder
        return m

    def exec_module(self, module) -> None:
        pass


def install(roots=IMPORT_ONLY) -> list[str]:
    """Put placeholders in front of every root in `roots` that cannot be imported; return their names."""
    missing = [r for r in roots if r not in sys.modules and importlib.util.find_spec(r) is None]
    if missing:
        sys.meta_path.insert(0, _Finder(set(missing)))
    return missing
