"""Importing upstream OpenVLA-OFT's `vla-scripts/finetune.py` from a checkout.

Upstream's packages (`prismatic`, `experiments`) are normally installed with `pip install -e .`;
a checkout that is not installed still works because its root goes on sys.path here, the one
sys.path edit of these scripts (our own packages are found as scripts/'s modules).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MODULE_NAME = "openvla_oft_finetune"


def import_finetune_script(path: Path) -> ModuleType:
    """Execute `<checkout>/vla-scripts/finetune.py` as module `openvla_oft_finetune`."""
    root = str(path.resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
