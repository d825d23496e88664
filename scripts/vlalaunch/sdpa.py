"""Which scaled-dot-product-attention kernel torch ran.

torch picks the kernel per call from the inputs (a mask, dtypes, head size, the GPU) and the
backends enabled; nothing records the choice. The probes profile their first micro-batch (forward
and backward) with torch's profiler, CPU activity only (no GPU memory), and count the SDPA aten ops
it saw: `_scaled_dot_product_flash_attention` (flash), `..._efficient_attention` (efficient),
`..._cudnn_attention` (cudnn), `_scaled_dot_product_attention_math` (math); on the CPU, torch's
CPU flash implementation counts as flash. The ViTs' unmasked
calls and the Llama's (masked when the batch is padded) may take different kernels, so the counts
of every kernel seen are reported; the flash-attn package (attn_implementation
"flash_attention_2") is not SDPA and shows as none of them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

KERNELS = (
    ("cudnn", "_scaled_dot_product_cudnn_attention"),
    ("flash", "_scaled_dot_product_flash_attention"),
    ("efficient", "_scaled_dot_product_efficient_attention"),
    ("math", "_scaled_dot_product_attention_math"),
)


def classify(op_name: str) -> str | None:
    """The kernel an aten op name stands for (forward or backward), or None."""
    for kernel, marker in KERNELS:
        if marker in op_name:
            return kernel
    return None


def count(events: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Forward calls per kernel from (op name, calls) pairs; backward ops are not counted."""
    out: dict[str, int] = {}
    for name, calls in events:
        if "backward" in name:
            continue
        kernel = classify(name)
        if kernel is not None:
            out[kernel] = out.get(kernel, 0) + calls
    return out


def summary(counts: Mapping[str, int]) -> str:
    """`efficient` when one kernel ran, `flash:50,efficient:32` when several, `none seen` if none."""
    if not counts:
        return "none seen"
    if len(counts) == 1:
        return next(iter(counts))
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


class Profiled:
    """`with Profiled() as p: <one micro-batch>`, then `p.counts` (needs torch)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._prof = None

    def __enter__(self) -> Profiled:
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU])
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._prof is not None
        self._prof.__exit__(*exc)
        self.counts = count((e.key, e.count) for e in self._prof.key_averages())


FORCE_ENV = "VLA_PROBE_SDPA"


def force_from_env(env: Mapping[str, str], log: Callable[[str], None]) -> Optional[str]:
    """`VLA_PROBE_SDPA=math|efficient|flash|cudnn`: leave only that SDPA backend enabled, so a run
    shows what a torch that picks it would need (torch 2.2.0's own choice for a masked bf16 call
    cannot be run on the GPU machine: issue 24 bounds it with both kernels). Returns the kernel
    forced, or None when the variable is unset."""
    kernel = env.get(FORCE_ENV, "").strip()
    if not kernel:
        return None
    names = [k for k, _ in KERNELS]
    if kernel not in names:
        raise SystemExit(f"{FORCE_ENV}={kernel!r}: not a kernel; use one of {', '.join(names)}")
    import torch

    switches = {
        "flash": torch.backends.cuda.enable_flash_sdp,
        "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
        "math": torch.backends.cuda.enable_math_sdp,
        "cudnn": getattr(torch.backends.cuda, "enable_cudnn_sdp", None),
    }
    for name, switch in switches.items():
        if switch is not None:
            switch(name == kernel)
    log(f"probe: {FORCE_ENV}={kernel}: only that SDPA kernel is enabled")
    return kernel
