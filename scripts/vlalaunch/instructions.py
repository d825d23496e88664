"""Task instructions of varied lengths, as the real datasets have.

Every sample of the old probes carried one instruction, so a batch was never padded and the
fork's Llama got no attention mask (SDPA's flash kernel). Real RLDS batches mix instructions of
different lengths: the collator pads them (right), the mask marks the padding, and the Llama runs
SDPA with a mask (another kernel, other memory) on shapes that change from step to step.

`varied` (the default) draws each sample's instruction from the platform's list below; `fixed`
keeps the one instruction of the old probes. The texts are written for this probe in the style of
the platforms' tasks (ALOHA: a few tasks of similar length, so little padding; LIBERO: 4 to 17
words, so most batches are padded by several tokens).
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

MODES = ("varied", "fixed")
FIXED = "put the green pepper into the pot"

_ALOHA = (
    "put the green pepper into the pot",
    "put the red pepper into the pot",
    "put the corn into the pot",
    "put the yellow corn into the pot",
    "fold the shirt",
    "scoop the raisins into the bowl",
    "scoop the green pepper into the bowl",
)

_LIBERO = (
    "turn on the stove",
    "open the top drawer",
    "put the bowl on the plate",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl",
    "open the middle drawer of the cabinet",
    "put the wine bottle on top of the cabinet",
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "turn on the stove and put the moka pot on it",
    "pick up the book and place it in the back compartment of the caddy",
    "put the white mug on the left plate and put the yellow and white mug on the right plate",
    "stack the black bowl at the front on the black bowl in the middle",
    "put the chocolate pudding to the right of the plate",
)

_BY_PLATFORM = {"ALOHA": _ALOHA, "LIBERO": _LIBERO, "BRIDGE": _LIBERO}


class Rng(Protocol):
    def integers(self, low: int, high: int) -> int: ...


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"--probe_instructions {mode!r}: expected varied or fixed")
    return mode


def choices(platform: str, mode: str) -> Sequence[str]:
    """The instructions a sample may carry under `mode` on `platform`."""
    return (FIXED,) if check_mode(mode) == "fixed" else _BY_PLATFORM.get(platform, _LIBERO)


def draw(rng: Rng, platform: str, mode: str) -> str:
    """One sample's instruction (`fixed` leaves the generator untouched, as the old probes did)."""
    pool = choices(platform, mode)
    return pool[0] if len(pool) == 1 else pool[int(rng.integers(0, len(pool)))]


def word_tokens(text: str) -> int:
    """Tokens of `text` under the probes' stand-in tokenizer (one per word or punctuation mark)."""
    return len(re.findall(r"\w+|[^\w\s]", text))
