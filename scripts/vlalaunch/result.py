"""The `VLA_PROBE_RESULT {json}` line: one per rank, printed by the probe trainers at the end.

This is the one definition of the line. Writers: scripts/probe_finetune.py (the stand-in) and
scripts/real_probe_finetune.py (the real code). Readers: the report scripts here, and the launcher
(src/app/supervised_run.rs::reported_peaks, which reads `gpu_uuid`, `peak_nvml_used_bytes` and
`peak_nvml_used_v2_bytes` and ignores every other key). Keys keep their order; keys added later are
appended and optional for every reader (None is written as null).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

MARK = "VLA_PROBE_RESULT "


@dataclass
class ProbeResult:
    rank: int
    world_size: int
    local_rank: int
    gpu_uuid: Optional[str]
    device_name: str
    platform: str
    batch_size: int
    grad_accumulation_steps: int
    num_images_in_input: int
    use_film: bool
    use_proprio: bool
    use_fsdp: bool
    gradient_checkpointing: bool
    wrap_units: int
    lora_rank: Optional[int]
    vram_cap_bytes: Optional[int]
    static_bytes: Optional[int]
    peak_alloc_bytes: Optional[int]
    peak_reserved_bytes: Optional[int]
    peak_nvml_used_bytes: Optional[int]
    peak_nvml_used_v2_bytes: Optional[int]
    s_per_step: Optional[float]
    samples_per_s: Optional[float]
    steps: int
    last_loss: Optional[float]
    tiny: bool
    params: dict[str, int]
    # Real-code probe only (absent from the stand-in's lines).
    real_code: Optional[bool] = None
    text_tokens: Optional[int] = None
    attn_implementation: Optional[str] = None
    torch: Optional[str] = None
    # Added with issue 24 (optional for every reader).
    instructions: Optional[str] = None  # "varied" or "fixed"
    text_tokens_min: Optional[int] = None
    text_tokens_max: Optional[int] = None
    padded_batches: Optional[int] = None  # micro-batches whose attention mask had a padded position
    sdpa_kernel: Optional[str] = None  # flash / efficient / math / cudnn / mixed: ... / unknown
    peak_alloc_by_step: Optional[list[int]] = None  # max_memory_allocated after steps 1, 10, 50, 100, 200, ...
    peak_reserved_by_step: Optional[list[int]] = None
    step_times_s: Optional[list[float]] = None  # every optimizer step's wall time (issue 27: the spread)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know (when parsing)

    # The keys each writer has always printed, in order; later keys are printed only when set, so a
    # line from today's writers is byte-identical to the one before this type existed.
    _ALWAYS = 27

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, f in enumerate(dataclasses.fields(self)):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if i < self._ALWAYS or value is not None:
                out[f.name] = value
        out.update(self.extra)
        return out

    def to_line(self) -> str:
        return MARK + json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [f.name for f in dataclasses.fields(cls)[: cls._ALWAYS] if f.name not in data]
        if missing:
            raise ValueError(f"{MARK.strip()} line lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def parse_line(cls, line: str) -> Optional[ProbeResult]:
        """The result on this line (the mark may follow other text, e.g. torchrun's `[rank0]:`), or
        None if it holds none or a malformed one."""
        i = line.find(MARK)
        if i < 0:
            return None
        try:
            data = json.loads(line[i + len(MARK) :])
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError):
            return None

    @classmethod
    def parse_log(cls, text: str) -> list[ProbeResult]:
        """Every result line of a log (lines split at \\n and at tqdm's \\r, as the launcher does)."""
        return [r for r in (cls.parse_line(x) for x in _lines(text)) if r is not None]


def _lines(text: str) -> Iterable[str]:
    return text.replace("\r", "\n").split("\n")
