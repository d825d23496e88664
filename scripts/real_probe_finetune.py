#!/usr/bin/env python3
"""The real-code memory probe: upstream OpenVLA-OFT's own vla-scripts/finetune.py code, with random
weights and synthetic batches (see docs/probe.md, "The real-code probe").

Imports finetune.py from a checkout (--openvla_oft_dir or $OPENVLA_OFT_DIR or the working directory),
builds OpenVLAForActionPrediction from an OpenVLAConfig with openvla-7b's architecture, applies LoRA, FiLM,
the proprio projector and the L1 action head as finetune.py does (its own wrap_ddp / init_module), feeds
batches made by its RLDSBatchTransform + PaddedCollatorForActionPrediction through its run_forward_pass,
and prints one `VLA_PROBE_RESULT {json}` line per rank, like scripts/probe_finetune.py.
"""


import contextlib
import dataclasses
import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from real_probe import stubs, upstream  # noqa: E402  (no torch yet: flag errors come first)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def probe_config_class(ft):
    """finetune.py's FinetuneConfig plus the user fork's --gradient_checkpointing and the probe's own
    --count_params_only (draccus parses it, so every upstream flag and default is accepted as is)."""

    @dataclasses.dataclass
    class RealProbeConfig(ft.FinetuneConfig):
        gradient_checkpointing: bool = False  # HF non-reentrant checkpointing of the Llama layers (the fork's flag)
        count_params_only: bool = False  # Print the parameter counts (built on the meta device) and exit

    return RealProbeConfig


def escape_percent_in_help() -> None:
    """finetune.py's own `--help` crashes under draccus 0.8.0: a field comment says "(from 10% to 100%)" and
    argparse %-formats help strings ("unsupported format character 't'"). Print such a text unformatted so
    that `--help` lists every flag (the launcher reads them from it)."""
    import argparse

    real = argparse.HelpFormatter._expand_help

    def expand_help(self, action):
        try:
            return real(self, action)
        except (ValueError, TypeError):  # a bare % in the comment: print the text as written
            return self._get_help_string(action)

    argparse.HelpFormatter._expand_help = expand_help


def init_distributed(cuda: bool):
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:  # plain `python real_probe_finetune.py`: a world of one, still wrapped
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    # Under torchrun, importing finetune.py already created the process group (prismatic's overwatch
    # builds an accelerate PartialState at import time when WORLD_SIZE is set), as in the real script.
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    from accelerate import PartialState  # finetune.py's source of the device index

    state = PartialState()
    return dist.get_rank(), dist.get_world_size(), state.local_process_index


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


def main() -> int:
    try:
        dir_flag, argv = upstream.take_dir_flag(sys.argv[1:])
        checkout = upstream.find_checkout(dir_flag)
    except upstream.CheckoutError as e:
        print(f"real_probe_finetune.py: error: {e}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0]] + argv  # constants.py reads the platform word from sys.argv, as for finetune.py
    placeholders = stubs.install()
    ft = upstream.import_finetune(checkout)

    import draccus

    escape_percent_in_help()
    cfg = draccus.parse(config_class=probe_config_class(ft), args=argv)
    from prismatic.vla.constants import ROBOT_PLATFORM as platform  # chosen from sys.argv, as for finetune.py

    if cfg.use_diffusion or not cfg.use_l1_regression:
        print("real_probe_finetune.py: error: only --use_l1_regression True --use_diffusion False is measured by "
              "the real-code probe (the launcher's plans use the L1 head)", file=sys.stderr)
        return 2
    if not cfg.use_lora:
        print("real_probe_finetune.py: error: --use_lora False: finetune.py itself only supports LoRA", file=sys.stderr)
        return 2
    tiny = os.environ.get("VLA_PROBE_TINY") == "1"
    cap = os.environ.get("VLA_LAUNCH_VRAM_CAP_BYTES") or None
    if cap is not None and not (cap.isdigit() and int(cap) > 0):
        print(f"real_probe_finetune.py: error: VLA_LAUNCH_VRAM_CAP_BYTES={cap!r} is not a positive byte count; "
              "unset it or give bytes, e.g. 25254903808", file=sys.stderr)
        return 2

    import torch

    if cfg.count_params_only:
        return count_only(ft, cfg, platform, tiny)

    cuda = not tiny
    if cuda and not torch.cuda.is_available():
        print("real_probe_finetune.py: error: no CUDA device visible; the full-size probe needs a GPU "
              "(VLA_PROBE_TINY=1 runs a shrunken model on the CPU)", file=sys.stderr)
        return 1
    if tiny:
        cpu_shims(ft)
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)
    rank, world, local_rank = init_distributed(cuda)
    device_id = local_rank if cuda else "cpu"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    gpu_uuid, sampler = None, None
    if cuda:
        torch.cuda.empty_cache()
        props = torch.cuda.get_device_properties(device)
        gpu_uuid = str(props.uuid)
        gpu_uuid = gpu_uuid if gpu_uuid.startswith(("GPU-", "MIG-")) else "GPU-" + gpu_uuid
        from probe.nvml import NvmlSampler

        sampler = NvmlSampler(gpu_uuid).start()
        if cap:  # as scripts/probe_finetune.py: the cap is for the whole GPU, context and NCCL included
            torch.distributed.all_reduce(torch.zeros(1, device=device))
            torch.cuda.synchronize(device)
            outside = (sampler.used_now() or 0) - torch.cuda.memory_reserved(device)
            frac = max(0.0, min(1.0, (int(cap) - outside) / props.total_memory))
            torch.cuda.set_per_process_memory_fraction(frac, device)
            log(rank, f"probe: VLA_LAUNCH_VRAM_CAP_BYTES={cap}: {outside} bytes already used outside torch's "
                      f"allocator (context, NCCL, driver); allocator capped at {frac:.4f} of {props.total_memory} bytes")
    log(rank, f"probe: REAL CODE from {checkout}; platform {platform} (chunk {ft.NUM_ACTIONS_CHUNK}, action dim "
              f"{ft.ACTION_DIM}, proprio dim {ft.PROPRIO_DIM}), world {world}, DDP, gradient checkpointing "
              f"{cfg.gradient_checkpointing}{', VLA_PROBE_TINY on CPU' if tiny else ''}; torch {torch.__version__}")
    if placeholders:
        log(rank, f"probe: import-only placeholders for modules not installed: {', '.join(placeholders)}")
    log(rank, "probe: random weights, synthetic batches through RLDSBatchTransform + PaddedCollatorForActionPrediction; "
              "no wandb, no validation, no checkpoints saved")

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
    loader = iter(make_loader(ft, cfg, platform))

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    step_times: list[float] = []
    seq = None
    progress = ft.tqdm.tqdm(total=cfg.max_steps, leave=False)
    vla.train()
    optimizer.zero_grad()
    from probe import memtrace

    trace = memtrace.start() if cuda else None  # VLA_PROBE_MEMTRACE=DIR: what is alive at the peak
    sync()
    t0 = time.perf_counter()
    batch_idx, loss_val = 0, None
    while len(step_times) < cfg.max_steps:
        batch = next(loader)
        seq = tuple(batch["input_ids"].shape)
        loss, metrics = ft.run_forward_pass(
            vla=vla, action_head=action_head, noisy_action_projector=None,
            proprio_projector=proprio_projector if cfg.use_proprio else None, batch=batch,
            action_tokenizer=action_tokenizer, device_id=device_id, use_l1_regression=cfg.use_l1_regression,
            use_diffusion=cfg.use_diffusion, use_proprio=cfg.use_proprio, use_film=cfg.use_film,
            num_patches=num_patches, compute_diffusion_l1=False, num_diffusion_steps_train=None,
        )
        (loss / cfg.grad_accumulation_steps).backward()
        batch_idx += 1
        if batch_idx % cfg.grad_accumulation_steps == 0:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress.update()
            sync()
            t = time.perf_counter()
            step_times.append(t - t0)
            t0 = t
            loss_val = metrics["loss_value"]
    progress.close()
    memtrace.finish(trace, rank, local_rank)
    print(file=sys.stderr, flush=True)

    if sampler is not None:
        sampler.stop()
    timed = step_times[2:] if len(step_times) > 2 else step_times
    s_per_step = sum(timed) / len(timed) if timed else None
    result = {
        "rank": rank, "world_size": world, "local_rank": local_rank, "gpu_uuid": gpu_uuid,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "platform": platform, "batch_size": cfg.batch_size, "grad_accumulation_steps": cfg.grad_accumulation_steps,
        "num_images_in_input": cfg.num_images_in_input, "use_film": cfg.use_film, "use_proprio": cfg.use_proprio,
        "use_fsdp": False, "gradient_checkpointing": cfg.gradient_checkpointing, "wrap_units": 2 + int(cfg.use_proprio),
        "lora_rank": cfg.lora_rank, "vram_cap_bytes": int(cap) if cap else None, "static_bytes": static,
        "peak_alloc_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "peak_nvml_used_bytes": sampler.peak_v1 if sampler else None,
        "peak_nvml_used_v2_bytes": sampler.peak_v2 if sampler else None,
        "s_per_step": s_per_step,
        "samples_per_s": (cfg.batch_size * cfg.grad_accumulation_steps * world / s_per_step) if s_per_step else None,
        "steps": len(step_times), "last_loss": loss_val, "tiny": tiny, "params": params,
        "step_times_s": [round(x, 4) for x in step_times],
        "real_code": True, "text_tokens": seq[1] if seq else None,
        "attn_implementation": vla.module.config._attn_implementation,
        "torch": torch.__version__,
    }
    print("VLA_PROBE_RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    with contextlib.suppress(Exception):
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def build(ft, cfg, device_id, device, tiny: bool, rank: int):
    """finetune.py's model setup, in its order, with `from_pretrained` replaced by a random-weight build."""
    import torch

    vla = upstream.build_vla(tiny, device)
    vla.vision_backbone.set_num_images_in_input(cfg.num_images_in_input)
    if cfg.gradient_checkpointing:  # the user fork's flag: HF non-reentrant checkpointing (covers the Llama layers)
        vla.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_config = ft.LoraConfig(r=cfg.lora_rank, lora_alpha=min(cfg.lora_rank, 16), lora_dropout=cfg.lora_dropout,
                                target_modules="all-linear", init_lora_weights="gaussian")
    vla = ft.get_peft_model(vla, lora_config)
    if rank == 0:
        vla.print_trainable_parameters()
    if cfg.use_film:
        if rank == 0:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (original)")
        vla.model.vision_backbone = ft.FiLMedPrismaticVisionBackbone(vision_backbone=vla.model.vision_backbone,
                                                                     llm_dim=vla.llm_dim)
        if rank == 0:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (post-wrap)")
        vla.model.vision_backbone = vla.model.vision_backbone.to(device_id)
    parts_total, parts_trainable = count(vla), count(vla, True)
    vla = ft.wrap_ddp(vla, device_id, find_unused=True)
    proprio_projector = None
    if cfg.use_proprio:
        proprio_projector = ft.init_module(ft.ProprioProjector, "proprio_projector", cfg, device_id,
                                           {"llm_dim": vla.module.llm_dim, "proprio_dim": ft.PROPRIO_DIM})
        parts_total += count(proprio_projector)
        parts_trainable += count(proprio_projector, True)
    action_head = ft.init_module(ft.L1RegressionActionHead, "action_head", cfg, device_id,
                                 {"input_dim": vla.module.llm_dim, "hidden_dim": vla.module.llm_dim,
                                  "action_dim": ft.ACTION_DIM}, to_bf16=True)
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

    print(f"probe: REAL CODE count only; platform {platform} (chunk {ft.NUM_ACTIONS_CHUNK}, action dim "
          f"{ft.ACTION_DIM}, proprio dim {ft.PROPRIO_DIM})")
    vla = upstream.build_vla(tiny, torch.device("meta"))
    vla.vision_backbone.set_num_images_in_input(cfg.num_images_in_input)
    lora_config = ft.LoraConfig(r=cfg.lora_rank, lora_alpha=min(cfg.lora_rank, 16), lora_dropout=cfg.lora_dropout,
                                target_modules="all-linear", init_lora_weights="gaussian")
    vla = ft.get_peft_model(vla, lora_config)
    vla.print_trainable_parameters()
    total, trainable = count(vla), count(vla, True)
    from accelerate import init_empty_weights

    with init_empty_weights():
        if cfg.use_film:
            ft.count_parameters(vla.vision_backbone, "vla.vision_backbone (original)")
            vla.model.vision_backbone = ft.FiLMedPrismaticVisionBackbone(vision_backbone=vla.model.vision_backbone,
                                                                         llm_dim=vla.llm_dim)
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
