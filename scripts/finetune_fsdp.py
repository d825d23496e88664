#!/usr/bin/env python3
"""FSDP and gradient checkpointing for upstream OpenVLA-OFT's `vla-scripts/finetune.py`.

Upstream moojink/openvla-oft trains with DDP only. This wrapper imports that script as a module
(it is never copied: the user's own checkout is used), adds two flags with the names and defaults
of the fork that introduced them,

    --use_fsdp               False   shard the VLA, FiLM, action head and proprio projector (FSDP)
    --gradient_checkpointing False   recompute the Llama layers in backward (DDP or FSDP)

and replaces, for FSDP only, what DDP does differently: the wrapping (`wrap_ddp`), the checkpoint
saving (`save_training_checkpoint`) and the validation clock. Everything else -- the data pipeline,
`run_forward_pass`, the losses, LoRA, FiLM, the optimizer, the schedule, the training loop,
`--resume` loading -- is upstream's own code, run unchanged.

Run it exactly like finetune.py, from the checkout (or name the script with VLA_FINETUNE_SCRIPT):

    torchrun --standalone --nnodes 1 --nproc-per-node 4 /path/to/finetune_fsdp.py \\
        --vla_path openvla/openvla-7b ... --use_fsdp True --gradient_checkpointing True

How FSDP is done (docs/fsdp.md has the reasoning and the measurements):
- Which FSDP: FSDP2 (`fully_shard`) from torch 2.5; FSDP1 (`FullyShardedDataParallel` with
  `use_orig_params=True`) on torch 2.2 to 2.4 (upstream pins 2.2.0, which has no FSDP2); an older
  torch is refused (exit 2) before any model loads (vlalaunch/torchcompat.py).
- FSDP2 shards every parameter on its own (a DTensor), so the frozen base weights never get
  gradient storage; FSDP1 flattens each unit and allocates the gradient of the whole flat parameter
  once any member trains (more memory; the same units).
- Units: each Llama decoder layer; each ViT block (with FiLM: each FiLM block, plus its `scale` and
  `shift` Linears as units of their own, because FSDP wants one dtype in a unit (FSDP2: among the
  trainable parameters; FSDP1: among all) and FiLM is fp32 while LoRA is bf16); the rest of the VLA is the root unit.
  The action head's MLP and the proprio projector are roots of their own.
- Dtypes are left as upstream makes them (bf16 base, LoRA and head; fp32 FiLM and proprio
  projector), no MixedPrecisionPolicy: autocast does the compute casting as under DDP, and
  gradients are reduced in their parameter's dtype as DDP does.
- Checkpoints: the same files, keys, shapes and dtypes as upstream DDP. Full tensors are gathered
  to the CPU of rank 0, which writes (FSDP2: one parameter at a time; FSDP1: torch's full state
  dict, offloaded to rank 0's CPU unit by unit). Ranks wait for rank 0's writing and merging on a
  gloo group whose timeout is long (VLA_SAVE_WAIT_S, default 6 h), not at an NCCL barrier under the
  process group's 10-minute timeout. With
  `--merge_lora_during_training True` only rank 0 loads the base model on its CPU to merge (upstream
  does it on every rank): that costs one bf16 copy of the base model (about 15 GB for
  openvla-7b) of host RAM on rank 0's node.
"""

import dataclasses
import datetime
import os
import sys
import time as _time
from pathlib import Path

from vlalaunch import helpfmt, torchcompat, upstream

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
    module = upstream.import_finetune_script(path)
    for name in ("FinetuneConfig", "finetune", "wrap_ddp", "save_training_checkpoint", "run_validation"):
        if not hasattr(module, name):
            _die(f"{path} has no `{name}`: this wrapper expects moojink/openvla-oft's finetune.py (main, 213c5ff)")
    return module


def extend_config(ft):
    """FinetuneConfig plus the fork's two flags."""
    names = {f.name for f in dataclasses.fields(ft.FinetuneConfig)}
    present = sorted(names & {"use_fsdp", "gradient_checkpointing"})
    if present:
        _die(f"{ft.__file__} already has --{' and --'.join(present)}: run that script directly instead of this wrapper")

    @dataclasses.dataclass
    class FinetuneConfig(ft.FinetuneConfig):
        use_fsdp: bool = False  # If True, shards the model over the GPUs with FSDP (torch < 2.5: FSDP1) instead of DDP
        gradient_checkpointing: bool = False  # If True, recomputes the Llama layers in backward (less memory, slower)

    FinetuneConfig.__module__ = __name__
    FinetuneConfig.__doc__ = ft.FinetuneConfig.__doc__
    return FinetuneConfig


# ----------------------------------------------------------------------------------------------
# Wrapping


def film_block_class() -> type:
    """FiLM's block class from the checkout. Without it the FiLM blocks would not become units of
    their own: their fp32 scale/shift would land in a bf16 unit and the run would die much later with
    an unrelated dtype error, so a failed import is fatal here, with the reason."""
    try:
        from prismatic.models.film_vit_wrapper import FiLMedVisionTransformerBlock
    except ImportError as e:
        _die(
            f"cannot import FiLMedVisionTransformerBlock from prismatic.models.film_vit_wrapper ({e}); "
            "--use_fsdp True needs it to shard FiLM: run from the openvla-oft checkout whose "
            "vla-scripts/finetune.py this wraps (or set VLA_FINETUNE_SCRIPT to it) and check that "
            "its prismatic package imports"
        )
    return FiLMedVisionTransformerBlock


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


def _is_fsdp1(module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def unwrap(module):
    """The module itself under an FSDP1 wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return module.module if _is_fsdp1(module) else module


class FsdpWrapper:
    """Replaces finetune.py's `wrap_ddp(module, device_id, find_unused)`."""

    def __init__(self, cfg, ddp_wrap, impl: str = "fsdp2"):
        self.cfg = cfg
        self.ddp_wrap = ddp_wrap
        self.impl = impl
        self.mesh = None
        self.units = 0
        self.fsdp1_roots: list = []  # FSDP1 wrappers made here (checks gather full gradients through them)

    def _mesh(self, device):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if self.mesh is None:
            self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        return self.mesh

    def _fsdp1(self, module, device, policy=None):
        """FSDP1 around `module` (units below it from `policy`), with upstream's dtypes kept."""
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

        wrapped = FullyShardedDataParallel(
            module,
            sharding_strategy=ShardingStrategy.FULL_SHARD,
            auto_wrap_policy=policy,
            use_orig_params=True,  # LoRA: trainable and frozen parameters share a unit
            limit_all_gathers=True,
            device_id=device,  # on the CPU (gloo checks) too: without it torch 2.2 picks a CUDA device
        )
        self.units = sum(1 for _ in FullyShardedDataParallel.fsdp_modules(wrapped)) + self.units
        self.fsdp1_roots.append(wrapped)
        return wrapped

    def _shard(self, module, device):
        torchcompat.fully_shard_function()(module, mesh=self._mesh(device))
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
            module = self._shard_vla(module, device)
        elif _overrides_forward(module):
            # proprio projector, noisy action projector: called through forward
            if self.impl == "fsdp1":
                module = self._fsdp1(module, device)
            else:
                self._shard(module, device)
        else:
            # action heads: upstream calls `head.module.predict_action(...)`, which never runs the
            # head's own forward; shard each child that holds parameters (L1: its MLPResNet) so
            # that FSDP's hooks run when predict_action calls it
            for name, child in list(module.named_children()):
                if any(True for _ in child.parameters()):
                    if self.impl == "fsdp1":
                        setattr(module, name, self._fsdp1(child, device))
                    else:
                        self._shard(child, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # upstream moved the whole model here before sharding
        return _sharded_container(module, device)

    def _shard_vla(self, vla, device):
        from timm.models.vision_transformer import Block

        FiLMedVisionTransformerBlock = film_block_class()
        film_inner = set()
        film_linears = set()
        for m in vla.modules():
            if isinstance(m, FiLMedVisionTransformerBlock):
                film_inner.add(id(m.block))
                film_linears.update((id(m.scale), id(m.shift)))

        def is_unit(m) -> bool:
            # FiLM's forward calls the block's attn/mlp directly, never block(x): the FiLM block is
            # the unit; its fp32 scale/shift get units of their own (FSDP wants one dtype in a unit;
            # LoRA in the block is bf16)
            if isinstance(m, FiLMedVisionTransformerBlock) or id(m) in film_linears:
                return True
            if isinstance(m, Block):
                return id(m) not in film_inner
            return type(m).__name__.endswith("DecoderLayer")

        if self.impl == "fsdp1":
            import functools

            from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

            return self._fsdp1(vla, device, functools.partial(lambda_auto_wrap_policy, lambda_fn=is_unit))
        # children before parents: reversed pre-order
        for m in reversed(list(vla.modules())):
            if is_unit(m):
                self._shard(m, device)
        self._shard(vla, device)
        return vla


def enable_gradient_checkpointing(vla) -> None:
    """As the fork does: Hugging Face's non-reentrant checkpointing on the Llama only (the ViTs
    are not checkpointed)."""
    vla.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _gather_dtensors(state_dict, keep_on_this_rank: bool):
    """FSDP2: full tensors of a sharded state dict, one entry at a time, on the CPU of the saving
    rank. Every rank must call this with the same keys in the same order (all-gathers)."""
    DTensor = torchcompat.dtensor_class()

    out = {}
    for k, v in state_dict.items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        if keep_on_this_rank:
            out[k] = v.detach().to("cpu", copy=True)
        del v
    return out


def _fsdp1_full_state_dict(module, keep_on_this_rank: bool):
    """FSDP1: the full state dict of `module` (FSDP units anywhere inside), with the keys of the
    unwrapped module. torch gathers it unit by unit and offloads to the CPU of rank 0; the other
    ranks get {}. Every rank must call this (all-gathers)."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    # offload unit by unit on GPUs; on the CPU (gloo checks) torch 2.2 segfaults offloading a tensor
    # that is already there, and the gathered tensors are CPU copies anyway
    on_gpu = any(p.device.type == "cuda" for p in module.parameters())
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
        sd = module.state_dict()
    return {k: v.detach().cpu() for k, v in sd.items()} if keep_on_this_rank else {}


def _full_state_dict(module, keep_on_this_rank: bool):
    """The full state dict of a wrapped part (FSDP1 or FSDP2 inside) on the saving rank's CPU."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(True for _ in FullyShardedDataParallel.fsdp_modules(module)):
        return _fsdp1_full_state_dict(module, keep_on_this_rank)
    return _gather_dtensors(module.state_dict(), keep_on_this_rank)


def _prefix_of(root, target) -> str:
    """The state-dict key prefix of `target` inside `root` (FSDP1's wrapper names removed)."""
    for name, m in root.named_modules():
        if m is target:
            clean = name.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")
            return clean + "." if clean else ""
    raise ValueError("module not found under its root")


SAVE_WAIT_ENV = "VLA_SAVE_WAIT_S"
SAVE_WAIT_DEFAULT_S = 6 * 3600


class MainWait:
    """Every rank waits here while rank 0 writes and merges alone.

    An NCCL barrier would do it under the default process group's timeout (NCCL: 10 minutes), and
    a merge that reads the 15 GB base model from slow storage outlasts it: the job died at save time.
    The wait is a barrier on a gloo group of its own whose timeout is long (VLA_SAVE_WAIT_S, default
    6 h), started asynchronously so the waiting ranks print how long they have waited, once a
    minute. A rank 0 that dies ends the wait at once (gloo sees the peer go; torchrun stops the
    rest), so the long timeout costs nothing when something fails."""

    def __init__(self, timeout_s: float, log_every_s: float = 60.0):
        self.timeout_s = timeout_s
        self.log_every_s = log_every_s
        self.group = None

    @classmethod
    def from_env(cls) -> "MainWait":
        raw = os.environ.get(SAVE_WAIT_ENV, "")
        if raw and not raw.isdigit():
            _die(f"{SAVE_WAIT_ENV}={raw!r} is not a number of seconds; unset it (6 h) or give seconds, e.g. 21600")
        return cls(float(raw) if raw else SAVE_WAIT_DEFAULT_S)

    def wait(self, what: str) -> None:
        import torch.distributed as dist

        if self.group is None:  # collective: every rank reaches the first save together
            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=self.timeout_s))
        work = dist.barrier(group=self.group, async_op=True)
        t0 = _time.monotonic()
        next_log = self.log_every_s
        while not work.is_completed():
            _time.sleep(0.05)
            waited = _time.monotonic() - t0
            if waited >= next_log:
                print(f"rank {dist.get_rank()}: waiting for rank 0 ({what}) for {waited / 60:.0f} min", file=sys.stderr)
                next_log += self.log_every_s
        work.wait()  # raises what the barrier met (a peer gone, the long timeout)


def make_fsdp_save(ft, wait: MainWait):
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

        wrapped = vla.module
        peft_model = unwrap(wrapped)
        if _is_fsdp1(wrapped):
            vla_sd = _fsdp1_full_state_dict(wrapped, main)  # everything, on rank 0 only
            keys = list(vla_sd)
        else:
            sharded = peft_model.state_dict()  # DTensors: nothing gathered yet
            keys = list(sharded)
        # which keys peft's save_pretrained keeps (LoRA, plus embedding layers when it decides to):
        # ask it with the keys themselves as values
        adapter_keys = (
            set(get_peft_model_state_dict(peft_model, state_dict={k: k for k in keys}).values()) if keys else set()
        )
        vb_prefix = _prefix_of(peft_model, peft_model.vision_backbone) if cfg.use_film else None
        vb_keys = {k for k in keys if k.startswith(vb_prefix)} if vb_prefix is not None else set()
        if not _is_fsdp1(wrapped):
            # FSDP2: gather only what is written, one parameter at a time
            vla_sd = _gather_dtensors({k: v for k, v in sharded.items() if k in adapter_keys | vb_keys}, main)
            del sharded
        adapter_sd = {k: v for k, v in vla_sd.items() if k in adapter_keys}
        parts = []
        if cfg.use_proprio and proprio_projector is not None:
            parts.append(("proprio_projector", proprio_projector))
        if cfg.use_diffusion and noisy_action_projector is not None:
            parts.append(("noisy_action_projector", noisy_action_projector))
        if (cfg.use_l1_regression or cfg.use_diffusion) and action_head is not None:
            parts.append(("action_head", action_head))
        gathered = [(name, _full_state_dict(m, main)) for name, m in parts]
        if vb_prefix is not None:
            # as upstream: the whole (FiLM-wrapped) vision backbone, not only FiLM
            n = len(vb_prefix)
            gathered.append(("vision_backbone", {k[n:]: v for k, v in vla_sd.items() if k.startswith(vb_prefix)}))
        del vla_sd

        if main:
            processor.save_pretrained(checkpoint_dir)
            peft_model.save_pretrained(adapter_dir, state_dict=adapter_sd)
            for name, sd in gathered:
                torch.save(sd, checkpoint_dir / f"{name}--{suffix}")
        del adapter_sd, gathered
        wait.wait("writing the checkpoint")

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
            wait.wait("merging LoRA into the base model")

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


def choose_impl(cfg) -> str:
    """FSDP1 or FSDP2 for this torch (exit 2 naming the version and the fix when neither runs).
    Called before finetune() loads any model."""
    import torch

    try:
        choice = torchcompat.choose_fsdp(torch.__version__, os.environ.get(torchcompat.IMPL_ENV) or None)
    except torchcompat.UnsupportedTorch as e:
        _die(str(e))
    return choice.impl


def install(ft, cfg) -> FsdpWrapper:
    """Patch the module's globals that finetune() looks up at call time."""
    import torch

    impl = choose_impl(cfg) if cfg.use_fsdp else "ddp"
    wrapper = FsdpWrapper(cfg, ft.wrap_ddp, impl)
    ft.wrap_ddp = wrapper
    if cfg.use_fsdp:
        ft.save_training_checkpoint = make_fsdp_save(ft, MainWait.from_env())
        clock_device = "cuda" if torch.cuda.is_available() else "cpu"
        ft.time = AgreedClock(clock_device)
    return wrapper


def main() -> None:
    import draccus

    ft = import_finetune(locate_finetune_script())
    config_class = extend_config(ft)
    helpfmt.tolerate_percent_in_help()
    cfg = draccus.parse(config_class=config_class)
    wrapper = install(ft, cfg)
    import torch

    mode = wrapper.impl.upper() if cfg.use_fsdp else "DDP"
    print(
        f"finetune_fsdp.py: {mode} (torch {torch.__version__}), gradient checkpointing {cfg.gradient_checkpointing}",
        file=sys.stderr,
    )
    ft.finetune.__wrapped__(cfg)


if __name__ == "__main__":
    main()
