"""What both probe trainers do around the loop: the process group, the GPU's identity, the NVML
sampler and the launcher's VRAM cap."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from vlalaunch import sdpa
from vlalaunch.loop import LoopResult, TextStats
from vlalaunch.result import ProbeResult

CAP_ENV = "VLA_LAUNCH_VRAM_CAP_BYTES"


class UsageError(Exception):
    """A bad flag or environment value (exit 2); the message names it and the fix."""


def vram_cap() -> Optional[int]:
    """The launcher's per-GPU cap in bytes, or None."""
    raw = os.environ.get(CAP_ENV) or None
    if raw is None:
        return None
    if not (raw.isdigit() and int(raw) > 0):
        raise UsageError(f"{CAP_ENV}={raw!r} is not a positive byte count; unset it or give bytes, e.g. 25254903808")
    return int(raw)


def init_distributed(cuda: bool) -> tuple[int, int, int]:
    """(rank, world size, local rank). Plain `python probe.py` is a world of one, still wrapped.
    Under torchrun the group may exist already (importing upstream's finetune.py builds an
    accelerate PartialState when WORLD_SIZE is set)."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


@dataclass
class Gpu:
    uuid: str
    sampler: Any  # probe.nvml.NvmlSampler


def watch_gpu(device: Any, cap: Optional[int], log: Callable[[str], None]) -> Gpu:
    """Start sampling NVML for `device`; under a cap, limit torch's allocator so that the whole GPU
    as nvidia-smi sees it (CUDA context, NCCL's buffers, the driver's reservation included) stays
    within it. A first collective creates the NCCL communicator so that it is counted."""
    import torch
    import torch.distributed as dist

    from probe.nvml import NvmlSampler

    props = torch.cuda.get_device_properties(device)
    uuid = str(props.uuid)
    uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid
    sampler = NvmlSampler(uuid).start()
    sdpa.force_from_env(os.environ, log)
    if cap:
        dist.all_reduce(torch.zeros(1, device=device))
        torch.cuda.synchronize(device)
        outside = (sampler.used_now() or 0) - torch.cuda.memory_reserved(device)
        frac = max(0.0, min(1.0, (cap - outside) / props.total_memory))
        torch.cuda.set_per_process_memory_fraction(frac, device)
        log(
            f"probe: {CAP_ENV}={cap}: {outside} bytes already used outside torch's allocator (context, NCCL, "
            f"driver); allocator capped at {frac:.4f} of {props.total_memory} bytes"
        )
    return Gpu(uuid, sampler)


def finish_distributed() -> None:
    import contextlib

    import torch.distributed as dist

    with contextlib.suppress(Exception):
        dist.barrier()
        dist.destroy_process_group()


def probe_result(
    cfg: Any,
    *,
    rank: int,
    world: int,
    local_rank: int,
    platform: str,
    device: Any,
    gpu: Optional[Gpu],
    cap: Optional[int],
    static: Optional[int],
    ran: LoopResult,
    text: TextStats,
    params: dict[str, int],
    tiny: bool,
    use_fsdp: bool,
    wrap_units: int,
    lora_rank: Optional[int],
    **extra: Any,
) -> ProbeResult:
    """The result line's fields that both trainers fill the same way (`extra`: the real probe's)."""
    import torch

    cuda = device.type == "cuda"
    s_per_step = ran.s_per_step
    return ProbeResult(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        gpu_uuid=gpu.uuid if gpu else None,
        device_name=torch.cuda.get_device_name(device) if cuda else "cpu",
        platform=platform,
        batch_size=cfg.batch_size,
        grad_accumulation_steps=cfg.grad_accumulation_steps,
        num_images_in_input=cfg.num_images_in_input,
        use_film=cfg.use_film,
        use_proprio=cfg.use_proprio,
        use_fsdp=use_fsdp,
        gradient_checkpointing=cfg.gradient_checkpointing,
        wrap_units=wrap_units,
        lora_rank=lora_rank,
        vram_cap_bytes=cap,
        static_bytes=static,
        peak_alloc_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
        peak_reserved_bytes=torch.cuda.max_memory_reserved(device) if cuda else None,
        peak_nvml_used_bytes=gpu.sampler.peak_v1 if gpu else None,
        peak_nvml_used_v2_bytes=gpu.sampler.peak_v2 if gpu else None,
        s_per_step=s_per_step,
        samples_per_s=(cfg.batch_size * cfg.grad_accumulation_steps * world / s_per_step) if s_per_step else None,
        steps=len(ran.step_times),
        last_loss=ran.last_loss,
        tiny=tiny,
        params=params,
        **extra,
        instructions=cfg.probe_instructions,
        text_tokens_min=text.min,
        text_tokens_max=text.max,
        padded_batches=text.padded,
        sdpa_kernel=sdpa.summary(ran.sdpa_counts) if ran.sdpa_counts is not None else None,
        peak_alloc_by_step=ran.peak_alloc_by_step or None,
        peak_reserved_by_step=ran.peak_reserved_by_step or None,
        step_times_s=[round(t, 4) for t in ran.step_times] or None,
    )
