#!/usr/bin/env python3
"""Memory-faithful stand-in for OpenVLA-OFT's vla-scripts/finetune.py (see docs/probe.md).

Same flags, same model shapes and dtypes (random weights), same wrappers and training loop on
synthetic batches with the real sequence layout; prints one `VLA_PROBE_RESULT {json}` line per rank
(vlalaunch/result.py) with the peak memory it measured. `--probe_instructions varied` (the default)
gives the samples prompts of different lengths, padded with an attention mask as real batches are.
Needs torch and transformers only (no peft, timm, draccus).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings

from probe import flags  # flag errors must come before importing torch
from vlalaunch import instructions, loop, runtime


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


def synthetic_batch(cfg, dims, consts, device, rng, platform: str):
    """One micro-batch with the real layout: BOS + prompt + chunk*dim action tokens + stop (the
    256*images patch tokens and the proprio token are spliced in after BOS by the model). Under
    `varied` instructions each sample's prompt has its instruction's length and the batch is
    right-padded with the attention mask marking the padding, as upstream's collator does."""
    import torch

    b = cfg.batch_size
    a = consts["chunk"] * consts["action_dim"]
    base = dims.prompt_tokens - instructions.word_tokens(instructions.FIXED)
    prompts = [
        max(1, base + instructions.word_tokens(instructions.draw(rng, platform, cfg.probe_instructions)))
        for _ in range(b)
    ]
    n = 1 + max(prompts) + a + 1
    pad = dims.vocab - 1
    ids = torch.full((b, n), pad, device=device)
    attention_mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    labels = torch.full((b, n), -100, device=device)
    action_mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        end = 1 + p + a + 1
        ids[i, :end] = torch.randint(3, dims.vocab - 1, (end,), device=device)
        ids[i, 0], ids[i, end - 1] = 1, 2
        attention_mask[i, :end] = True
        labels[i, 1 + p : end] = ids[i, 1 + p : end]
        action_mask[i, 1 + p : 1 + p + a] = True
    return dict(
        input_ids=ids,
        attention_mask=attention_mask,
        labels=labels,
        action_mask=action_mask,
        pixel_values=torch.randn(
            b, 6 * cfg.num_images_in_input, dims.img, dims.img, device=device, dtype=torch.bfloat16
        ),
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
        print(
            "probe_finetune.py: error: --use_diffusion True is not modelled by the probe (the DDIM "
            "diffusion head); use --use_l1_regression True",
            file=sys.stderr,
        )
        return 2
    if cfg.num_images_in_input < 1 or cfg.batch_size < 1 or cfg.grad_accumulation_steps < 1:
        print(
            "probe_finetune.py: error: --num_images_in_input, --batch_size and --grad_accumulation_steps must be >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        instructions.check_mode(cfg.probe_instructions)
        cap = runtime.vram_cap()
    except (ValueError, runtime.UsageError) as e:
        print(f"probe_finetune.py: error: {e}", file=sys.stderr)
        return 2

    tiny = os.environ.get("VLA_PROBE_TINY") == "1"
    import torch
    from torch import nn

    from probe.model import FULL, TINY, Block, init_module_, materialise_

    dims = TINY if tiny else FULL
    if tiny and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the tiny matmuls are slower with a thread pool per rank
    if cfg.count_params_only:
        print(
            f"probe: platform {platform} (chunk {consts['chunk']}, action dim {consts['action_dim']}, "
            f"proprio dim {consts['proprio_dim']}){' [VLA_PROBE_TINY]' if tiny else ''}"
        )
        build_on_meta(cfg, dims, consts, 0)
        return 0

    cuda = not tiny
    if cuda and not torch.cuda.is_available():
        print(
            "probe_finetune.py: error: no CUDA device visible; the full-size probe needs a GPU "
            "(VLA_PROBE_TINY=1 runs a shrunken model on the CPU)",
            file=sys.stderr,
        )
        return 1
    rank, world, local_rank = runtime.init_distributed(cuda)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    gpu = runtime.watch_gpu(device, cap, lambda m: log(rank, m)) if cuda else None
    log(
        rank,
        f"probe: platform {platform} (chunk {consts['chunk']}, action dim {consts['action_dim']}, "
        f"proprio dim {consts['proprio_dim']}), world {world}, "
        f"{'FSDP' if cfg.use_fsdp else 'DDP'}, gradient checkpointing {cfg.gradient_checkpointing}"
        f"{', VLA_PROBE_TINY on CPU' if tiny else ''}",
    )
    log(
        rank,
        f"probe: synthetic batches ({cfg.probe_instructions} instructions; no dataset is read); "
        "checkpoints are not saved (the probe does not save)",
    )

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
        common = dict(
            sharding_strategy=ShardingStrategy.FULL_SHARD,
            use_orig_params=True,
            limit_all_gathers=True,
            device_id=device,
            param_init_fn=lambda m: init_module_(m, device),
        )
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
    import numpy as np

    rng = np.random.default_rng(rank)
    text = loop.TextStats()

    def micro_batch():
        batch = synthetic_batch(cfg, dims, consts, device, rng, platform)
        text.add(batch["input_ids"].shape[1], bool((~batch["attention_mask"]).any()))
        with amp:
            out, n = vla(
                batch["input_ids"],
                batch["attention_mask"],
                batch["pixel_values"],
                batch["labels"],
                batch["action_mask"],
                cfg.num_images_in_input,
                proprio=batch["proprio"] if cfg.use_proprio else None,
                proprio_projector=proprio if cfg.use_proprio else None,
            )
        if head_call is None:  # discrete action tokens: the LM loss is the loss
            loss = out.loss
        else:
            text_hidden = out.hidden_states[-1][:, n:-1]
            mask = batch["action_mask"][:, 1:]
            actions_hidden = text_hidden[mask].reshape(cfg.batch_size, consts["chunk"] * consts["action_dim"], -1)
            predicted = head_call(actions_hidden.to(torch.bfloat16))
            loss = nn.L1Loss()(batch["actions"].to(torch.bfloat16), predicted)
        (loss / cfg.grad_accumulation_steps).backward()
        return loss.detach().float()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def memory() -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)

    from probe import memtrace

    trace = memtrace.start() if cuda else None  # VLA_PROBE_MEMTRACE=DIR: what is alive at the peak
    ran = loop.run(
        micro_batch,
        optimizer,
        scheduler,
        accumulation=cfg.grad_accumulation_steps,
        max_steps=cfg.max_steps,
        sync=sync,
        progress=Progress(cfg.max_steps),
        memory=memory if cuda else None,
    )
    memtrace.finish(trace, rank, local_rank)

    if gpu is not None:
        gpu.sampler.stop()
    result = runtime.probe_result(
        cfg,
        rank=rank,
        world=world,
        local_rank=local_rank,
        platform=platform,
        device=device,
        gpu=gpu,
        cap=cap,
        static=static,
        ran=ran,
        text=text,
        params=params,
        tiny=tiny,
        use_fsdp=cfg.use_fsdp,
        wrap_units=wrap_units,
        lora_rank=cfg.lora_rank if cfg.use_lora else None,
    )
    print(result.to_line(), flush=True)
    runtime.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
