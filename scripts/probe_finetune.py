#!/usr/bin/env python3
"""Memory-faithful stand-in for OpenVLA-OFT's vla-scripts/finetune.py (see docs/probe.md).

Same flags, same model shapes and dtypes (random weights), same wrappers and training loop on
synthetic batches with the real sequence layout; prints one `VLA_PROBE_RESULT {json}` line per rank
with the peak memory it measured. Needs torch and transformers only (no peft, timm, draccus).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe import flags  # noqa: E402  (flag errors must come before importing torch)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def build_on_meta(cfg, dims, consts, rank: int):
    """Build every part on the meta device in finetune.py's order and dtypes; print its counts."""
    import torch

    from probe.model import FiLM, L1ActionHead, OpenVLA, ProprioProjector, apply_lora, count

    with torch.device("meta"):
        vla = OpenVLA(dims).to(torch.bfloat16)
        if cfg.use_lora:
            apply_lora(vla, cfg.lora_rank, cfg.lora_dropout)
            tr, al = count(vla, True), count(vla)
            log(rank, f"trainable params: {tr:,} || all params: {al:,} || trainable%: {100 * tr / al:.4f}")
        film = None
        if cfg.use_film:
            log(rank, f"# trainable params in vla.vision_backbone (original): {count(vla.vision_backbone, True):,}")
            film = FiLM(dims)  # fp32: finetune.py only moves the FiLM wrapper to the device
            vla.vision_backbone.film = film
            log(rank, f"# trainable params in vla.vision_backbone (post-wrap): {count(vla.vision_backbone, True):,}")
        proprio = None
        if cfg.use_proprio:
            proprio = ProprioProjector(dims.llm_hidden, consts["proprio_dim"])  # fp32
            log(rank, f"# trainable params in proprio_projector: {count(proprio, True):,}")
        head = None
        if cfg.use_l1_regression:
            head = L1ActionHead(dims.llm_hidden, consts["action_dim"], consts["chunk"]).to(torch.bfloat16)
            log(rank, f"# trainable params in action_head: {count(head, True):,}")
    parts = [m for m in (vla, proprio, head) if m is not None]
    total = sum(count(m) for m in parts)
    trainable = sum(count(m, True) for m in parts)
    log(rank, f"# total trainable params: {trainable:,} || total params: {total:,}")
    return vla, film, proprio, head, {"total": total, "trainable": trainable}


def init_distributed(cuda: bool):
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:  # plain `python probe_finetune.py`: a world of one, still wrapped
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, world, local_rank


def synthetic_batch(cfg, dims, consts, device):
    """One micro-batch with the real layout: BOS + prompt + chunk*dim action tokens + stop (the
    256*images patch tokens and the proprio token are spliced in after BOS by the model)."""
    import torch

    b, p = cfg.batch_size, dims.prompt_tokens
    a = consts["chunk"] * consts["action_dim"]
    n = 1 + p + a + 1
    ids = torch.randint(3, dims.vocab, (b, n), device=device)
    ids[:, 0], ids[:, -1] = 1, 2
    labels = ids.clone()
    labels[:, : 1 + p] = -100
    action_mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    action_mask[:, 1 + p : 1 + p + a] = True
    return dict(
        input_ids=ids,
        attention_mask=torch.ones(b, n, dtype=torch.bool, device=device),
        labels=labels,
        action_mask=action_mask,
        pixel_values=torch.randn(b, 6 * cfg.num_images_in_input, dims.img, dims.img, device=device,
                                 dtype=torch.bfloat16),
        proprio=torch.randn(b, consts["proprio_dim"], device=device),
        actions=torch.randn(b, consts["chunk"], consts["action_dim"], device=device),
    )


class Progress:
    """tqdm on every rank like finetune.py; a bare carriage-return counter where tqdm is missing."""

    def __init__(self, total: int):
        try:
            import tqdm

            self.bar = tqdm.tqdm(total=total, leave=False)
        except ImportError:
            self.bar, self.n, self.total, self.t0 = None, 0, total, time.perf_counter()

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()
            return
        self.n += 1
        dt = time.perf_counter() - self.t0
        print(f"\r{self.n}/{self.total} [{dt:.0f}s, {dt / self.n:.2f}s/it]", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        # end the carriage-return line so the result line starts a line even when streams are merged
        print(file=sys.stderr, flush=True)


def main() -> int:
    cfg = flags.parse(sys.argv[1:])
    platform = flags.detect_platform(sys.argv)
    consts = flags.PLATFORMS[platform]
    if cfg.use_diffusion:
        print("probe_finetune.py: error: --use_diffusion True is not modelled by the probe (the DDIM "
              "diffusion head); use --use_l1_regression True", file=sys.stderr)
        return 2
    if cfg.num_images_in_input < 1 or cfg.batch_size < 1 or cfg.grad_accumulation_steps < 1:
        print("probe_finetune.py: error: --num_images_in_input, --batch_size and --grad_accumulation_steps "
              "must be >= 1", file=sys.stderr)
        return 2

    tiny = os.environ.get("VLA_PROBE_TINY") == "1"
    cap = os.environ.get("VLA_LAUNCH_VRAM_CAP_BYTES") or None
    if cap is not None and not (cap.isdigit() and int(cap) > 0):
        print(f"probe_finetune.py: error: VLA_LAUNCH_VRAM_CAP_BYTES={cap!r} is not a positive byte count; "
              "unset it or give bytes, e.g. 25254903808", file=sys.stderr)
        return 2
    import torch
    from torch import nn

    from probe.model import FULL, TINY, Block, init_module_, materialise_

    dims = TINY if tiny else FULL
    if tiny and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the tiny matmuls are slower with a thread pool per rank
    if cfg.count_params_only:
        print(f"probe: platform {platform} (chunk {consts['chunk']}, action dim {consts['action_dim']}, "
              f"proprio dim {consts['proprio_dim']}){' [VLA_PROBE_TINY]' if tiny else ''}")
        build_on_meta(cfg, dims, consts, 0)
        return 0

    cuda = not tiny
    if cuda and not torch.cuda.is_available():
        print("probe_finetune.py: error: no CUDA device visible; the full-size probe needs a GPU "
              "(VLA_PROBE_TINY=1 runs a shrunken model on the CPU)", file=sys.stderr)
        return 1
    rank, world, local_rank = init_distributed(cuda)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    gpu_uuid, sampler = None, None
    if cuda:
        props = torch.cuda.get_device_properties(device)
        gpu_uuid = str(props.uuid)
        gpu_uuid = gpu_uuid if gpu_uuid.startswith(("GPU-", "MIG-")) else "GPU-" + gpu_uuid
        from probe.nvml import NvmlSampler

        sampler = NvmlSampler(gpu_uuid).start()
        if cap:
            # The cap is for the whole GPU as nvidia-smi sees it (a smaller card): the CUDA context,
            # NCCL's buffers and the driver's reservation come out of it before torch's allocator
            # gets the rest. A first collective creates the NCCL communicator so it is counted.
            import torch.distributed as dist

            dist.all_reduce(torch.zeros(1, device=device))
            torch.cuda.synchronize(device)
            outside = (sampler.used_now() or 0) - torch.cuda.memory_reserved(device)
            frac = max(0.0, min(1.0, (int(cap) - outside) / props.total_memory))
            torch.cuda.set_per_process_memory_fraction(frac, device)
            log(rank, f"probe: VLA_LAUNCH_VRAM_CAP_BYTES={cap}: {outside} bytes already used outside torch's "
                      f"allocator (context, NCCL, driver); allocator capped at {frac:.4f} of {props.total_memory} bytes")
    log(rank, f"probe: platform {platform} (chunk {consts['chunk']}, action dim {consts['action_dim']}, "
              f"proprio dim {consts['proprio_dim']}), world {world}, "
              f"{'FSDP' if cfg.use_fsdp else 'DDP'}, gradient checkpointing {cfg.gradient_checkpointing}"
              f"{', VLA_PROBE_TINY on CPU' if tiny else ''}")
    log(rank, "probe: synthetic batches (no dataset is read); checkpoints are not saved (the probe does not save)")

    vla, film, proprio, head, params = build_on_meta(cfg, dims, consts, rank)
    if cfg.gradient_checkpointing:
        with warnings.catch_warnings():  # newer transformers rename it; the behaviour is the same
            warnings.simplefilter("ignore", FutureWarning)
            vla.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vla.train()

    if cfg.use_fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        film_ids = {id(m) for m in film.modules() if isinstance(m, nn.Linear)} if film is not None else set()
        policy = functools.partial(
            lambda_auto_wrap_policy,
            lambda_fn=lambda m: isinstance(m, (LlamaDecoderLayer, Block)) or id(m) in film_ids,
        )
        common = dict(sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                      limit_all_gathers=True, device_id=device,
                      param_init_fn=lambda m: init_module_(m, device))
        vla = FSDP(vla, auto_wrap_policy=policy, **common)
        proprio = FSDP(proprio, **common) if proprio is not None else None
        head = FSDP(head, **common) if head is not None else None
        head_call = head
        wrap_units = sum(isinstance(m, FSDP) for r in (vla, proprio, head) if r is not None for m in r.modules())
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [local_rank] if cuda else None
        materialise_(vla, device)
        vla = DDP(vla, device_ids=ids, find_unused_parameters=True, gradient_as_bucket_view=True)
        if proprio is not None:
            materialise_(proprio, device)
            proprio = DDP(proprio, device_ids=ids, gradient_as_bucket_view=True)
        if head is not None:
            materialise_(head, device)
            head = DDP(head, device_ids=ids, gradient_as_bucket_view=True)
        head_call = head.module if head is not None else None  # finetune.py calls action_head.module
        wrap_units = sum(m is not None for m in (vla, proprio, head))

    trainable = [p for m in (vla, proprio, head) if m is not None for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[cfg.num_steps_before_decay], gamma=0.1)
    static = torch.cuda.memory_allocated(device) if cuda else None

    amp = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16)

    def forward_pass():
        batch = synthetic_batch(cfg, dims, consts, device)
        with amp:
            out, n = vla(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                         batch["action_mask"], cfg.num_images_in_input,
                         proprio=batch["proprio"] if cfg.use_proprio else None,
                         proprio_projector=proprio if cfg.use_proprio else None)
        if head_call is None:  # discrete action tokens: the LM loss is the loss
            return out.loss
        text_hidden = out.hidden_states[-1][:, n:-1]
        mask = batch["action_mask"][:, 1:]
        actions_hidden = text_hidden[mask].reshape(cfg.batch_size, consts["chunk"] * consts["action_dim"], -1)
        predicted = head_call(actions_hidden.to(torch.bfloat16))
        return nn.L1Loss()(batch["actions"].to(torch.bfloat16), predicted)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    step_times: list[float] = []
    progress = Progress(cfg.max_steps)
    from probe import memtrace

    trace = memtrace.start() if cuda else None  # VLA_PROBE_MEMTRACE=DIR: what is alive at the peak
    sync()
    t0 = time.perf_counter()
    batch_idx, loss_val = 0, None
    while len(step_times) < cfg.max_steps:
        loss = forward_pass()
        (loss / cfg.grad_accumulation_steps).backward()
        batch_idx += 1
        if batch_idx % cfg.grad_accumulation_steps == 0:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            sync()
            t = time.perf_counter()
            step_times.append(t - t0)
            t0 = t
            loss_val = float(loss.detach().float())
            progress.update()
    progress.close()
    memtrace.finish(trace, rank, local_rank)

    if sampler is not None:
        sampler.stop()
    timed = step_times[2:] if len(step_times) > 2 else step_times
    s_per_step = sum(timed) / len(timed) if timed else None
    result = {
        "rank": rank,
        "world_size": world,
        "local_rank": local_rank,
        "gpu_uuid": gpu_uuid,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "platform": platform,
        "batch_size": cfg.batch_size,
        "grad_accumulation_steps": cfg.grad_accumulation_steps,
        "num_images_in_input": cfg.num_images_in_input,
        "use_film": cfg.use_film,
        "use_proprio": cfg.use_proprio,
        "use_fsdp": cfg.use_fsdp,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "wrap_units": wrap_units,
        "lora_rank": cfg.lora_rank if cfg.use_lora else None,
        "vram_cap_bytes": int(cap) if cap else None,
        "static_bytes": static,
        "peak_alloc_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "peak_nvml_used_bytes": sampler.peak_v1 if sampler else None,
        "peak_nvml_used_v2_bytes": sampler.peak_v2 if sampler else None,
        "s_per_step": s_per_step,
        "samples_per_s": (cfg.batch_size * cfg.grad_accumulation_steps * world / s_per_step) if s_per_step else None,
        "steps": len(step_times),
        "last_loss": loss_val,
        "tiny": tiny,
        "params": params,
    }
    print("VLA_PROBE_RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
