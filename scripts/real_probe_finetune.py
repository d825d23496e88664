#!/usr/bin/env python3
"""The real-code memory probe: upstream OpenVLA-OFT's own vla-scripts/finetune.py code, with random
weights and synthetic batches (see docs/probe.md, "The real-code probe").

Imports finetune.py from a checkout (--openvla_oft_dir or $OPENVLA_OFT_DIR or the working directory),
builds OpenVLAForActionPrediction from an OpenVLAConfig with openvla-7b's architecture, applies LoRA, FiLM,
the proprio projector and the L1 action head as finetune.py does (its own wrap_ddp / init_module), feeds
batches made by its RLDSBatchTransform + PaddedCollatorForActionPrediction through its run_forward_pass,
and prints one `VLA_PROBE_RESULT {json}` line per rank (vlalaunch/result.py), like
scripts/probe_finetune.py. `--probe_instructions varied` (the default) gives the samples instructions of
different lengths, so batches are padded and the Llama gets the attention mask, as with real data.
"""

# No `from __future__ import annotations`: draccus reads the config's field types at run time.
import dataclasses
import os
import sys

from real_probe import stubs, upstream
from vlalaunch import helpfmt, instructions, loop, runtime

PROG = "real_probe_finetune.py"


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def probe_config_class(ft):
    """finetune.py's FinetuneConfig plus the user fork's --gradient_checkpointing and the probe's own
    flags (draccus parses them, so every upstream flag and default is accepted as is)."""

    @dataclasses.dataclass
    class RealProbeConfig(ft.FinetuneConfig):
        gradient_checkpointing: bool = False  # HF non-reentrant checkpointing of the Llama layers (the fork's flag)
        count_params_only: bool = False  # Print the parameter counts (built on the meta device) and exit
        probe_instructions: str = "varied"  # varied: instructions of different lengths (padded batches); fixed: one

    return RealProbeConfig


def cpu_shims(ft) -> None:
    """Tiny CPU mode only: finetune.py hard-codes CUDA (device_ids=[i], autocast("cuda")). Make its
    DDP wrapper drop device_ids and its autocast run on the CPU, so the same functions run here."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ft.DDP = lambda module, device_ids=None, **kw: DistributedDataParallel(module, device_ids=None, **kw)
    real_autocast = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return real_autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    ft.torch.autocast = autocast


def count(m, trainable=False) -> int:
    return sum(p.numel() for p in m.parameters() if (p.requires_grad or not trainable))


def fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def main() -> int:
    try:
        dir_flag, argv = upstream.take_dir_flag(sys.argv[1:])
        checkout = upstream.find_checkout(dir_flag)
    except upstream.CheckoutError as e:
        return fail(str(e))
    sys.argv = [sys.argv[0], *argv]  # constants.py reads the platform word from sys.argv, as for finetune.py
    placeholders = stubs.install()
    ft = upstream.import_finetune(checkout)

    import draccus

    helpfmt.tolerate_percent_in_help()
    cfg = draccus.parse(config_class=probe_config_class(ft), args=argv)
    from prismatic.vla.constants import ROBOT_PLATFORM as platform  # chosen from sys.argv, as for finetune.py

    if cfg.use_diffusion or not cfg.use_l1_regression:
        return fail(
            "only --use_l1_regression True --use_diffusion False is measured by "
            "the real-code probe (the launcher's plans use the L1 head)"
        )
    if not cfg.use_lora:
        return fail("--use_lora False: finetune.py itself only supports LoRA")
    try:
        instructions.check_mode(cfg.probe_instructions)
        cap = runtime.vram_cap()
    except (ValueError, runtime.UsageError) as e:
        return fail(str(e))
    tiny = os.environ.get("VLA_PROBE_TINY") == "1"

    import torch

    if cfg.count_params_only:
        return count_only(ft, cfg, platform, tiny)

    cuda = not tiny
    if cuda and not torch.cuda.is_available():
        return fail(
            "no CUDA device visible; the full-size probe needs a GPU "
            "(VLA_PROBE_TINY=1 runs a shrunken model on the CPU)",
            1,
        )
    if tiny:
        cpu_shims(ft)
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)
    rank, world, _ = runtime.init_distributed(cuda)
    from accelerate import PartialState  # finetune.py's source of the device index

    local_rank = PartialState().local_process_index
    device_id = local_rank if cuda else "cpu"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    gpu = None
    if cuda:
        torch.cuda.empty_cache()
        gpu = runtime.watch_gpu(device, cap, lambda m: log(rank, m))
    log(
        rank,
        f"probe: REAL CODE from {checkout}; platform {platform} (chunk {ft.NUM_ACTIONS_CHUNK}, action dim "
        f"{ft.ACTION_DIM}, proprio dim {ft.PROPRIO_DIM}), world {world}, DDP, gradient checkpointing "
        f"{cfg.gradient_checkpointing}{', VLA_PROBE_TINY on CPU' if tiny else ''}; torch {torch.__version__}",
    )
    if placeholders:
        log(rank, f"probe: import-only placeholders for modules not installed: {', '.join(placeholders)}")
    log(
        rank,
        "probe: random weights, synthetic batches through RLDSBatchTransform + PaddedCollatorForActionPrediction "
        f"({cfg.probe_instructions} instructions); no wandb, no validation, no checkpoints saved",
    )

    vla, proprio_projector, action_head, params = build(ft, cfg, device_id, device, tiny, rank)
    num_patches = vla.module.vision_backbone.get_num_patches() * vla.module.vision_backbone.get_num_images_in_input()
    if cfg.use_proprio:
        num_patches += 1

    trainable = [p for p in vla.parameters() if p.requires_grad]
    trainable += [p for p in action_head.parameters() if p.requires_grad]
    if cfg.use_proprio:
        trainable += [p for p in proprio_projector.parameters() if p.requires_grad]
    log(rank, f"# total trainable params: {sum(p.numel() for p in trainable)}")
    optimizer = ft.AdamW(trainable, lr=cfg.learning_rate)
    scheduler = ft.MultiStepLR(optimizer, milestones=[cfg.num_steps_before_decay], gamma=0.1)
    static = torch.cuda.memory_allocated(device) if cuda else None

    from real_probe.data import StandInTokenizer, make_loader

    action_tokenizer = ft.ActionTokenizer(StandInTokenizer())
    batches = iter(make_loader(ft, cfg, platform, instruction_mode=cfg.probe_instructions))
    text = loop.TextStats()

    def micro_batch() -> float:
        batch = next(batches)
        text.add(batch["input_ids"].shape[1], bool((~batch["attention_mask"]).any()))
        loss, metrics = ft.run_forward_pass(
            vla=vla,
            action_head=action_head,
            noisy_action_projector=None,
            proprio_projector=proprio_projector if cfg.use_proprio else None,
            batch=batch,
            action_tokenizer=action_tokenizer,
            device_id=device_id,
            use_l1_regression=cfg.use_l1_regression,
            use_diffusion=cfg.use_diffusion,
            use_proprio=cfg.use_proprio,
            use_film=cfg.use_film,
            num_patches=num_patches,
            compute_diffusion_l1=False,
            num_diffusion_steps_train=None,
        )
        (loss / cfg.grad_accumulation_steps).backward()
        return metrics["loss_value"]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def memory() -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)

    vla.train()
    from probe import memtrace

    trace = memtrace.start() if cuda else None  # VLA_PROBE_MEMTRACE=DIR: what is alive at the peak
    ran = loop.run(
        micro_batch,
        optimizer,
        scheduler,
        accumulation=cfg.grad_accumulation_steps,
        max_steps=cfg.max_steps,
        sync=sync,
        progress=ft.tqdm.tqdm(total=cfg.max_steps, leave=False),
        memory=memory if cuda else None,
    )
    memtrace.finish(trace, rank, local_rank)
    print(file=sys.stderr, flush=True)
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
        use_fsdp=False,
        wrap_units=2 + int(cfg.use_proprio),
        lora_rank=cfg.lora_rank,
        real_code=True,
        text_tokens=text.last,
        attn_implementation=vla.module.config._attn_implementation,
        torch=torch.__version__,
    )
    print(result.to_line(), flush=True)
    runtime.finish_distributed()
    return 0


def lora_config(ft, cfg):
    """finetune.py's LoraConfig."""
    return ft.LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=min(cfg.lora_rank, 16),
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        init_lora_weights="gaussian",
    )


def build(ft, cfg, device_id, device, tiny: bool, rank: int):
    """finetune.py's model setup, in its order, with `from_pretrained` replaced by a random-weight build."""
    import torch

    vla = upstream.build_vla(tiny, device)
    vla.vision_backbone.set_num_images_in_input(cfg.num_images_in_input)
    if cfg.gradient_checkpointing:  # the user fork's flag: HF non-reentrant checkpointing (covers the Llama layers)
        vla.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vla = ft.get_peft_model(vla, lora_config(ft, cfg))
    if rank == 0:
        vla.print_trainable_parameters()
    if cfg.use_film:
        if rank == 0:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (original)")
        vla.model.vision_backbone = ft.FiLMedPrismaticVisionBackbone(
            vision_backbone=vla.model.vision_backbone, llm_dim=vla.llm_dim
        )
        if rank == 0:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (post-wrap)")
        vla.model.vision_backbone = vla.model.vision_backbone.to(device_id)
    parts_total, parts_trainable = count(vla), count(vla, True)
    vla = ft.wrap_ddp(vla, device_id, find_unused=True)
    proprio_projector = None
    if cfg.use_proprio:
        proprio_projector = ft.init_module(
            ft.ProprioProjector,
            "proprio_projector",
            cfg,
            device_id,
            {"llm_dim": vla.module.llm_dim, "proprio_dim": ft.PROPRIO_DIM},
        )
        parts_total += count(proprio_projector)
        parts_trainable += count(proprio_projector, True)
    action_head = ft.init_module(
        ft.L1RegressionActionHead,
        "action_head",
        cfg,
        device_id,
        {"input_dim": vla.module.llm_dim, "hidden_dim": vla.module.llm_dim, "action_dim": ft.ACTION_DIM},
        to_bf16=True,
    )
    parts_total += count(action_head)
    parts_trainable += count(action_head, True)
    if torch.cuda.is_available() and not tiny:
        # The random init ran on the GPU; from_pretrained loads on the CPU and leaves nothing in torch's
        # cache, so hand back whatever the init left cached before training starts.
        torch.cuda.empty_cache()
    return vla, proprio_projector, action_head, {"total": parts_total, "trainable": parts_trainable}


def count_only(ft, cfg, platform: str, tiny: bool) -> int:
    """Build everything on the meta device (no memory, no GPU) through the same code and print the counts
    finetune.py prints."""
    import torch

    print(
        f"probe: REAL CODE count only; platform {platform} (chunk {ft.NUM_ACTIONS_CHUNK}, action dim "
        f"{ft.ACTION_DIM}, proprio dim {ft.PROPRIO_DIM})"
    )
    vla = upstream.build_vla(tiny, torch.device("meta"))
    vla.vision_backbone.set_num_images_in_input(cfg.num_images_in_input)
    vla = ft.get_peft_model(vla, lora_config(ft, cfg))
    vla.print_trainable_parameters()
    total, trainable = count(vla), count(vla, True)
    from accelerate import init_empty_weights

    with init_empty_weights():
        if cfg.use_film:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (original)")
            vla.model.vision_backbone = ft.FiLMedPrismaticVisionBackbone(
                vision_backbone=vla.model.vision_backbone, llm_dim=vla.llm_dim
            )
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (post-wrap)")
            total, trainable = count(vla), count(vla, True)
        mods = [ft.L1RegressionActionHead(input_dim=vla.llm_dim, hidden_dim=vla.llm_dim, action_dim=ft.ACTION_DIM)]
        if cfg.use_proprio:
            mods.append(ft.ProprioProjector(llm_dim=vla.llm_dim, proprio_dim=ft.PROPRIO_DIM))
    for m in mods:
        ft.count_parameters(m, type(m).__name__)
        total, trainable = total + count(m), trainable + count(m, True)
    print(f"# total trainable params: {trainable} || total params: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
