"""Which FSDP a torch can run, decided from its version string alone (before any model loads).

- torch >= 2.5: FSDP2 (`fully_shard`, per-parameter sharding; `torch.distributed.tensor` exports
  `DTensor`).
- 2.2 <= torch < 2.5: FSDP1 (`FullyShardedDataParallel(use_orig_params=True)`). 2.2.0 is upstream
  OpenVLA-OFT's pin and has no `fully_shard`; 2.4 has one, but its `torch.distributed.tensor` is
  an empty package (`DTensor` lives in `torch.distributed._tensor`), so its FSDP2 is not used.
- torch < 2.2: refused (untested; upstream pins 2.2.0).

`VLA_FSDP_IMPL=fsdp1|fsdp2` overrides the choice where that torch can run it (FSDP1 on any
supported torch; FSDP2 from 2.4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

FsdpImpl = Literal["fsdp1", "fsdp2"]
IMPL_ENV = "VLA_FSDP_IMPL"

MIN_FSDP1 = (2, 2)
MIN_FSDP2 = (2, 5)
MIN_FSDP2_FORCED = (2, 4)


class UnsupportedTorch(Exception):
    """This torch cannot run the addition's FSDP; the message names the version and the fix."""


@dataclass(frozen=True)
class Choice:
    impl: FsdpImpl
    torch_version: str
    reason: str


def parse_version(version: str) -> tuple[int, int, int]:
    """`2.2.0+cu121` -> (2, 2, 0); `2.5.0a0+git1234` -> (2, 5, 0)."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        raise UnsupportedTorch(
            f"cannot read torch's version {version!r}; install torch==2.2.0 (upstream's pin) or torch>=2.5"
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def choose_fsdp(version: str, forced: Optional[str] = None) -> Choice:
    """The FSDP implementation for `version` (torch.__version__), or UnsupportedTorch."""
    v = parse_version(version)[:2]
    if v < MIN_FSDP1:
        raise UnsupportedTorch(
            f"torch {version} is too old for --use_fsdp True (FSDP1 with use_orig_params needs torch >= 2.2); "
            "install upstream's pin, torch==2.2.0 (FSDP1), or torch>=2.5 (FSDP2)"
        )
    if forced:
        if forced not in ("fsdp1", "fsdp2"):
            raise UnsupportedTorch(
                f"{IMPL_ENV}={forced!r} is not fsdp1 or fsdp2; unset it to choose from torch's version"
            )
        if forced == "fsdp2" and v < MIN_FSDP2_FORCED:
            raise UnsupportedTorch(
                f"{IMPL_ENV}=fsdp2 needs torch >= 2.4 (fully_shard); torch {version} is installed: "
                f"unset {IMPL_ENV} (FSDP1 runs on it) or install torch>=2.5"
            )
        return Choice(forced, version, f"{IMPL_ENV}={forced}")  # type: ignore[arg-type]
    if v < MIN_FSDP2:
        return Choice("fsdp1", version, "torch < 2.5: FullyShardedDataParallel(use_orig_params=True)")
    return Choice("fsdp2", version, "torch >= 2.5: fully_shard")


def dtensor_class() -> type:
    """`DTensor`: exported by `torch.distributed.tensor` from 2.5; in 2.4 that package is empty and
    the class lives in `torch.distributed._tensor`."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        from torch.distributed._tensor import DTensor
    return DTensor


def fully_shard_function():
    """`fully_shard`: public from 2.6, under `_composable.fsdp` in 2.4 and 2.5."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard
