#!/usr/bin/env python3
"""FSDP and gradient checkpointing for upstream OpenVLA-OFT's `vla-scripts/finetune.py`.

Upstream moojink/openvla-oft trains with DDP only. This wrapper imports that script as a module
(it is never copied: the user's own checkout is used), adds two flags with the names and defaults
of the fork that introduced them,

    --use_fsdp               False   shard the VLA, FiLM, action head and proprio projector (FSDP2)
    --gradient_checkpointing False   recompute the Llama layers in backward (DDP or FSDP)

and replaces, for FSDP only, what DDP does differently: the wrapping (`wrap_ddp`), the checkpoint
saving (`save_training_checkpoint`) and the validation clock. Everything else -- the data pipeline,
`run_forward_pass`, the losses, LoRA, FiLM, the optimizer, the schedule, the training loop,
`--resume` loading -- is upstream's own code, run unchanged.

Run it exactly like finetune.py, from the checkout (or name the script with VLA_FINETUNE_SCRIPT):

    torchrun --standalone --nnodes 1 --nproc-per-node 4 /path/to/finetune_fsdp.py \\
        --vla_path openvla/openvla-7b ... --use_fsdp True --gradient_checkpointing True

How FSDP is done (docs/fsdp.md has the reasoning and the measurements):
- FSDP2 (`fully_shard`): every parameter is sharded on its own (a DTensor), so the frozen base
  weights never get gradient storage; only the LoRA, FiLM, head and projector parameters do.
- Units: each Llama decoder layer; each ViT block (with FiLM: each FiLM block, plus its `scale` and
  `shift` Linears as units of their own, because FSDP2 wants one dtype for the trainable
  parameters of a unit and FiLM is fp32 while LoRA is bf16); the rest of the VLA is the root unit.
  The action head's MLP and the proprio projector are roots of their own.
- Dtypes are left as upstream makes them (bf16 base, LoRA and head; fp32 FiLM and proprio
  projector), no MixedPrecisionPolicy: autocast does the compute casting as under DDP, and
  gradients are reduced in their parameter's dtype as DDP does.
- Checkpoints: the same files, keys, shapes and dtypes as upstream DDP. Full tensors are gathered
  one parameter at a time and copied to the CPU of rank 0, which writes. With
  `--merge_lora_during_training True` only rank 0 loads the base model on its CPU to merge (upstream
  does it on every rank): that costs one bf16 copy of the base model (about 15 GB for
  openvla-7b) of host RAM on rank 0's node.
"""


import dataclasses
import importlib.util
import os
import sys
import time as _time
from pathlib import Path

EXIT_USAGE = 2


def _die(msg: str) -> None:
    print(f"finetune_fsdp.py: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def locate_finetune_script() -> Path:
    """The upstream script: $VLA_FINETUNE_SCRIPT, else ./vla-scripts/finetune.py."""
    env = os.environ.get("VLA_FINETUNE_SCRIPT")
    path = Path(env) if env else Path.cwd() / "vla-scripts" / "finetune.py"
    if not path.is_file():
        where = f"VLA_FINETUNE_SCRIPT={env!r}" if env else f"{path} (from the current directory)"
        _die(
            f"cannot find OpenVLA-OFT's finetune.py at {where}; run from the root of an openvla-oft "
            "checkout or set VLA_FINETUNE_SCRIPT=/path/to/openvla-oft/vla-scripts/finetune.py"
        )
    return path.resolve()


def import_finetune(path: Path):
    """Import upstream's finetune.py as a module (the checkout root goes on sys.path, as for
    `pip install -e .`, so `prismatic` and `experiments` import)."""
    root = path.parent.parent
    for p in (str(root), str(path.parent)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location("openvla_oft_finetune", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in ("FinetuneConfig", "finetune", "wrap_ddp", "save_training_checkpoint", "run_validation"):
        if not hasattr(module, name):
            _die(f"{path} has no `{name}`: this wrapper expects moojink/openvla-oft's finetune.py (main, 213c5ff)")
    return module


def extend_config(ft):
    """FinetuneConfig plus the fork's two flags."""
    names = {f.name for f in dataclasses.fields(ft.FinetuneConfig)}
    present = sorted(names & {"use_fsdp", "gradient_checkpointing"})
    if present:
        _die(
            f"{ft.__file__} already has --{' and --'.join(present)}: run that script directly "
            "instead of this wrapper"
        )

    @dataclasses.dataclass
    class FinetuneConfig(ft.FinetuneConfig):
        # fmt: off
        use_fsdp: bool = False                           # If True, shards the model over the GPUs with FSDP2 instead of DDP
        gradient_checkpointing: bool = False             # If True, recomputes the Llama layers in backward (less memory, slower)
        # fmt: on

    FinetuneConfig.__module__ = __name__
    FinetuneConfig.__doc__ = ft.FinetuneConfig.__doc__
    return FinetuneConfig


# ----------------------------------------------------------------------------------------------
# FSDP2 wrapping


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4 / 2.5
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def _move(obj, device):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device) for v in obj)
    return obj


def _sharded_container(module, device):
    """Upstream reaches the model through `.module` (DDP's attribute) and saves `x.state_dict()`
    with DDP's `module.` key prefix; this holder gives a sharded module the same two things."""
    import torch.nn as nn

    class Sharded(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, *args, **kwargs):
            # DDP moves the inputs to its device (upstream passes `labels` and `proprio` on the CPU)
            return self.module(*_move(args, device), **_move(kwargs, device))

    return Sharded(module)


def _overrides_forward(module) -> bool:
    import torch.nn as nn

    return type(module).forward is not nn.Module.forward


class FsdpWrapper:
    """Replaces finetune.py's `wrap_ddp(module, device_id, find_unused)`."""

    def __init__(self, cfg, ddp_wrap):
        self.cfg = cfg
        self.ddp_wrap = ddp_wrap
        self.mesh = None
        self.units = 0

    def _mesh(self, device):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if self.mesh is None:
            self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        return self.mesh

    def _shard(self, module, device):
        _fully_shard()(module, mesh=self._mesh(device))
        self.units += 1

    def __call__(self, module, device_id, find_unused=False):
        import torch

        is_vla = hasattr(module, "language_model") and hasattr(module, "vision_backbone")
        if is_vla and self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(module)
        if not self.cfg.use_fsdp:
            return self.ddp_wrap(module, device_id, find_unused)

        device = next(module.parameters()).device
        if device.type != "cpu":
            device = torch.device(device.type, device.index if device.index is not None else device_id)
        if is_vla:
            self._shard_vla(module, device)
        elif _overrides_forward(module):
            # proprio projector, noisy action projector: called through forward
            self._shard(module, device)
        else:
            # action heads: upstream calls `head.module.predict_action(...)`, which never runs the
            # head's own forward; shard each child that holds parameters (L1: its MLPResNet) so
            # that FSDP's hooks run when predict_action calls it
            for child in module.children():
                if any(True for _ in child.parameters()):
                    self._shard(child, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # upstream moved the whole model here before sharding
        return _sharded_container(module, device)

    def _shard_vla(self, vla, device):
        from timm.models.vision_transformer import Block

        try:
            from prismatic.models.film_vit_wrapper import FiLMedVisionTransformerBlock
        except ImportError:  # pragma: no cover - same checkout as finetune.py
            FiLMedVisionTransformerBlock = ()
        film_inner = set()
        for m in vla.modules():
            if isinstance(m, FiLMedVisionTransformerBlock):
                film_inner.add(id(m.block))
        # children before parents: reversed pre-order
        for m in reversed(list(vla.modules())):
            if isinstance(m, FiLMedVisionTransformerBlock):
                # FiLM's forward calls the block's attn/mlp directly, never block(x): the FiLM
                # block is the unit; its fp32 scale/shift get units of their own (FSDP2 wants
                # one dtype for the trainable parameters of a unit; LoRA in the block is bf16)
                self._shard(m.scale, device)
                self._shard(m.shift, device)
                self._shard(m, device)
            elif isinstance(m, Block) and id(m) not in film_inner:
                self._shard(m, device)
            elif type(m).__name__.endswith("DecoderLayer"):
                self._shard(m, device)
        self._shard(vla, device)


def enable_gradient_checkpointing(vla) -> None:
    """As the fork does: Hugging Face's non-reentrant checkpointing on the Llama only (the ViTs
    are not checkpointed)."""
    vla.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _gather(state_dict, keep_on_this_rank: bool):
    """Full tensors of a (sharded) state dict, one entry at a time, on the CPU of the saving rank.
    Every rank must call this with the same keys in the same order (all-gathers)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in state_dict.items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        if keep_on_this_rank:
            out[k] = v.detach().to("cpu", copy=True)
        del v
    return out


def make_fsdp_save(ft):
    import torch
    import torch.distributed as dist
    from peft.utils import get_peft_model_state_dict

    def save_training_checkpoint(
        cfg,
        run_dir,
        log_step,
        vla,
        processor,
        proprio_projector,
        noisy_action_projector,
        action_head,
        train_dataset,
        distributed_state,
    ) -> None:
        """Writes what upstream's save_training_checkpoint writes, under the same names."""
        if cfg.save_latest_checkpoint_only:
            checkpoint_dir = run_dir
            suffix = "latest_checkpoint.pt"
        else:
            checkpoint_dir = Path(f"{run_dir}--{log_step}_chkpt")
            suffix = f"{log_step}_checkpoint.pt"
        adapter_dir = checkpoint_dir / "lora_adapter"
        main = distributed_state.is_main_process

        if main:
            os.makedirs(adapter_dir, exist_ok=True)
            ft.save_dataset_statistics(train_dataset.dataset_statistics, checkpoint_dir)
            print(f"Saving Model Checkpoint for Step {log_step}")
        dist.barrier()

        peft_model = vla.module
        # which keys peft's save_pretrained keeps (LoRA, plus embedding layers when it decides to):
        # ask it with the keys themselves as values, then gather only those
        sharded = peft_model.state_dict()
        wanted = set(get_peft_model_state_dict(peft_model, state_dict={k: k for k in sharded}).values())
        adapter_sd = _gather({k: v for k, v in sharded.items() if k in wanted}, main)
        del sharded
        parts = []
        if cfg.use_proprio and proprio_projector is not None:
            parts.append(("proprio_projector", proprio_projector))
        if cfg.use_diffusion and noisy_action_projector is not None:
            parts.append(("noisy_action_projector", noisy_action_projector))
        if (cfg.use_l1_regression or cfg.use_diffusion) and action_head is not None:
            parts.append(("action_head", action_head))
        gathered = [(name, _gather(m.state_dict(), main)) for name, m in parts]
        if cfg.use_film:
            # as upstream: the whole (FiLM-wrapped) vision backbone, not only FiLM
            gathered.append(("vision_backbone", _gather(peft_model.vision_backbone.state_dict(), main)))

        if main:
            processor.save_pretrained(checkpoint_dir)
            peft_model.save_pretrained(adapter_dir, state_dict=adapter_sd)
            for name, sd in gathered:
                torch.save(sd, checkpoint_dir / f"{name}--{suffix}")
        del adapter_sd, gathered
        dist.barrier()

        if cfg.use_lora and cfg.merge_lora_during_training:
            # upstream loads the base model on every rank; only the saving rank needs it
            if main:
                base_vla = ft.AutoModelForVision2Seq.from_pretrained(
                    cfg.vla_path, torch_dtype=torch.bfloat16, low_cpu_mem_usage=True, trust_remote_code=True
                )
                merged = ft.PeftModel.from_pretrained(base_vla, adapter_dir).merge_and_unload()
                merged.save_pretrained(checkpoint_dir)
                print(f"Saved merged model for Step {log_step} at: {checkpoint_dir}")
                del base_vla, merged
            dist.barrier()

    return save_training_checkpoint


class AgreedClock:
    """`time` for finetune.py under FSDP. run_validation stops when ITS rank's clock passes
    --val_time_limit; under FSDP every forward is collective, so ranks that stop after different
    numbers of batches hang. Every rank reads the slowest rank's clock instead (a MAX all-reduce
    per read; run_validation reads it once per batch), so all stop on the same batch."""

    def __init__(self, device):
        self.device = device

    def time(self) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([_time.time()], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def __getattr__(self, name):
        return getattr(_time, name)


# ----------------------------------------------------------------------------------------------


def install(ft, cfg) -> FsdpWrapper:
    """Patch the module's globals that finetune() looks up at call time."""
    import torch

    wrapper = FsdpWrapper(cfg, ft.wrap_ddp)
    ft.wrap_ddp = wrapper
    if cfg.use_fsdp:
        ft.save_training_checkpoint = make_fsdp_save(ft)
        clock_device = "cuda" if torch.cuda.is_available() else "cpu"
        ft.time = AgreedClock(clock_device)
    return wrapper


def tolerate_percent_in_help() -> None:
    """draccus turns the config's comments into argparse help strings, and argparse %-formats them:
    upstream's "(from 10% to 100%)" makes `finetune.py --help` crash (ValueError) instead of
    listing the flags. Print such a help string as written instead."""
    import argparse

    real = argparse.HelpFormatter._expand_help

    def expand_help(self, action):
        try:
            return real(self, action)
        except (ValueError, TypeError, KeyError):
            return self._get_help_string(action)

    argparse.HelpFormatter._expand_help = expand_help


def main() -> None:
    import draccus

    ft = import_finetune(locate_finetune_script())
    config_class = extend_config(ft)
    tolerate_percent_in_help()
    cfg = draccus.parse(config_class=config_class)
    install(ft, cfg)
    mode = "FSDP2" if cfg.use_fsdp else "DDP"
    print(f"finetune_fsdp.py: {mode}, gradient checkpointing {cfg.gradient_checkpointing}", file=sys.stderr)
    ft.finetune.__wrapped__(cfg)


if __name__ == "__main__":
    main()
