#!/usr/bin/env python3
"""Run scripts/finetune_fsdp.py -- hence upstream OpenVLA-OFT's finetune() -- on random weights and
synthetic batches, and record what it did: one JSON per rank with every training and validation
loss, optimizer-step times, memory peaks and the files saved.

Only the I/O around finetune() is replaced (nothing of its training logic):
- the model: `AutoModelForVision2Seq.from_pretrained(<base>)` builds openvla-7b's architecture with
  random weights from a fixed seed (identical on every rank and in every run; the real-code probe's
  construction, scripts/real_probe/upstream.py); a path holding a saved model (`--resume` from a
  merged checkpoint) is loaded for real by transformers;
- the processor: the real-code probe's stand-in tokenizer and openvla-7b's image processor;
- the data: RLDSDataset yields synthetic RLDS samples (scripts/real_probe/data.py) through the batch
  transform finetune() built; every rank gets its own stream, the same in every run;
- wandb: no-ops. Hub look-ups: none.
On a machine without CUDA (CPU tests, gloo), `cuda` autocast becomes CPU autocast, the device is
the CPU and DDP is built without device_ids; nothing else changes.

Run with scripts/ (and REAL_PROBE_DIR) on PYTHONPATH, as the shell checks beside it do.
Environment: FSDP_CHECK_OUT (directory for rank<N>.json, required), FSDP_CHECK_TINY=1 (2-layer
64-wide Llama and 3-block ViTs, for CPU), FSDP_CHECK_SEED (default 1234), REAL_PROBE_DIR (directory
holding the real_probe package, default: next to this script's parent), VLA_FINETUNE_SCRIPT or the
current directory (the openvla-oft checkout), FSDP_CHECK_GRADS (file: rank 0 saves the reduced
gradients of the first optimizer step there; `{rank}` in it becomes the rank),
VLA_LAUNCH_VRAM_CAP_BYTES (as the probe: a cap on torch's allocator), FSDP_CHECK_DDP_SYNC_HEAD=1
(see patch_ddp_head_sync), FSDP_CHECK_SLOW_VAL_RANK=N and FSDP_CHECK_SLOW_VAL_S (rank N sleeps
that long after each validation forward), FSDP_CHECK_LOCAL_CLOCK=1 (undo finetune_fsdp's agreed
validation clock: the negative test). The base model path is the literal
`--vla_path synthetic/openvla-7b`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent
BASE = "synthetic/openvla-7b"


import finetune_fsdp  # noqa: E402
from real_probe import data as rp_data  # noqa: E402
from real_probe import stubs as rp_stubs  # noqa: E402
from real_probe import upstream as rp_upstream  # noqa: E402
from vlalaunch import torchcompat  # noqa: E402

TINY = os.environ.get("FSDP_CHECK_TINY") == "1"
SEED = int(os.environ.get("FSDP_CHECK_SEED", "1234"))
OUT = Path(os.environ["FSDP_CHECK_OUT"])
GRADS_OUT = os.environ.get("FSDP_CHECK_GRADS")
RECORD: dict = {"losses": [], "val_losses": [], "step_times": [], "events": []}
WRAPPER = None  # finetune_fsdp's FsdpWrapper, once installed


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def build_base(device):
    import torch

    torch.manual_seed(SEED)
    vla = rp_upstream.build_vla(TINY, device)
    return vla


class Processor:
    """The stand-in tokenizer + openvla-7b's image processor; save_pretrained writes a marker (the
    real processor writes tokenizer files that we do not have)."""

    def __init__(self):
        self.tokenizer = rp_data.StandInTokenizer()
        self.image_processor = rp_data.image_processor()

    def save_pretrained(self, directory):
        Path(directory, "processor_stand_in.json").write_text(json.dumps({"stand_in": True}) + "\n")


def patch_io(ft, cuda: bool) -> None:
    import numpy as np
    import torch
    from torch.utils.data import IterableDataset

    class _Wandb:
        def init(self, *a, **k):
            return None

        def log(self, *a, **k):
            return None

    ft.wandb = _Wandb()
    ft.model_is_on_hf_hub = lambda path: False
    ft.update_auto_map = lambda path: None
    ft.check_model_logic_mismatch = lambda path: None

    class _AutoProcessor:
        @staticmethod
        def register(*a, **k):
            return None

        @staticmethod
        def from_pretrained(*a, **k):
            return Processor()

    ft.AutoProcessor = _AutoProcessor
    real_auto_model = ft.AutoModelForVision2Seq

    class _AutoModel:
        @staticmethod
        def register(*a, **k):
            return real_auto_model.register(*a, **k)

        @staticmethod
        def from_pretrained(path, **kwargs):
            if str(path) != BASE:
                return real_auto_model.from_pretrained(path, **kwargs)
            if RECORD.get("_saving"):
                # the merge in save_training_checkpoint wants the base on the CPU: build it where
                # training built it (same RNG, same weights) and move it
                t0 = time.time()
                vla = build_base(torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu").to("cpu")
                if cuda:
                    torch.cuda.empty_cache()
                RECORD["events"].append({"merge_base_built_s": time.time() - t0})
                return vla
            dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
            return build_base(dev)

    ft.AutoModelForVision2Seq = _AutoModel

    platform = "ALOHA" if ft.ACTION_DIM == 14 else ("LIBERO" if ft.NUM_ACTIONS_CHUNK == 8 else "BRIDGE")

    class _Dataset(IterableDataset):
        def __init__(
            self,
            data_root_dir,
            dataset_name,
            batch_transform,
            resize_resolution=None,
            shuffle_buffer_size=0,
            train=True,
            image_aug=False,
        ):
            self.name, self.transform, self.train = dataset_name, batch_transform, train
            self.num_images = ft_cfg.num_images_in_input
            stats = {
                "mean": np.zeros(ft.ACTION_DIM),
                "std": np.ones(ft.ACTION_DIM),
                "q01": -np.ones(ft.ACTION_DIM),
                "q99": np.ones(ft.ACTION_DIM),
            }
            self.dataset_statistics = {
                dataset_name: {
                    "action": dict(stats),
                    "proprio": {"mean": np.zeros(ft.PROPRIO_DIM), "std": np.ones(ft.PROPRIO_DIM)},
                }
            }

        def __iter__(self):
            rng = np.random.default_rng(SEED + 1000 * rank() + (0 if self.train else 500))
            consts = (ft.NUM_ACTIONS_CHUNK, ft.ACTION_DIM, ft.PROPRIO_DIM)
            while True:
                yield self.transform(rp_data.rlds_sample(rng, self.name, platform, self.num_images, *consts))

    ft.RLDSDataset = _Dataset

    # record the losses: finetune() calls run_forward_pass once per micro-batch (train) and per
    # validation batch (under no_grad)
    real_forward = ft.run_forward_pass

    slow_rank = os.environ.get("FSDP_CHECK_SLOW_VAL_RANK")

    def run_forward_pass(*args, **kwargs):
        loss, metrics = real_forward(*args, **kwargs)
        if slow_rank is not None and int(slow_rank) == rank() and not torch.is_grad_enabled():
            # a rank slowed down after its forward's collectives, before run_validation reads the clock
            time.sleep(float(os.environ.get("FSDP_CHECK_SLOW_VAL_S", "0.5")))
        (RECORD["losses"] if torch.is_grad_enabled() else RECORD["val_losses"]).append(float(metrics["loss_value"]))
        return loss, metrics

    ft.run_forward_pass = run_forward_pass

    # count Llama decoder-layer forwards: with gradient checkpointing each training micro-batch runs
    # every layer twice (forward, then recomputation in backward)
    real_get_peft_model = ft.get_peft_model

    def get_peft_model(model, *a, **k):
        RECORD["decoder_layer_calls"] = 0

        def count(*_):
            RECORD["decoder_layer_calls"] += 1

        for layer in model.language_model.model.layers:
            layer.register_forward_pre_hook(count)
        RECORD["decoder_layers"] = len(model.language_model.model.layers)
        return real_get_peft_model(model, *a, **k)

    ft.get_peft_model = get_peft_model

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, **kw):
            params = list(params)
            RECORD["static_bytes"] = torch.cuda.memory_allocated() if cuda else None
            RECORD["trainable_params"] = sum(p.numel() for p in params)
            RECORD["trainable_bytes"] = sum(p.numel() * p.element_size() for p in params)
            super().__init__(params, **kw)
            self._t = None
            self._dumped = False

        def step(self, *a, **k):
            if GRADS_OUT and not self._dumped:
                self._dumped = True
                dump_grads(self, cuda)
            out = super().step(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            now = time.time()
            if self._t is not None:
                RECORD["step_times"].append(now - self._t)
            self._t = now
            return out

    ft.AdamW = AdamW


def dump_grads(optimizer, cuda: bool) -> None:
    """The reduced gradient of every trainable parameter at the first optimizer step (full
    tensors, fp32, in the optimizer's order), saved by rank 0: DDP and FSDP must agree on them.
    FSDP2's are DTensors; FSDP1's are flat shards until its units are summoned with gradients."""
    import contextlib

    from torch.distributed.fsdp import FullyShardedDataParallel

    DTensor = torchcompat.dtensor_class()
    with contextlib.ExitStack() as stack:
        for root in WRAPPER.fsdp1_roots if WRAPPER is not None else []:
            stack.enter_context(FullyShardedDataParallel.summon_full_params(root, writeback=False, with_grads=True))
        _dump_grads(optimizer, cuda, DTensor)


def _dump_grads(optimizer, cuda: bool, DTensor) -> None:
    import torch

    grads = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            if isinstance(g, DTensor):
                g = g.full_tensor()
            grads.append(g.detach().float().cpu())
    if True:  # every rank: under DDP each rank holds its own (reduced) copy
        if cuda:  # full tensors of 852M parameters are too big to keep: norms and a sample
            grads = [
                None if g is None else {"norm": g.norm().item(), "numel": g.numel(), "head": g.flatten()[:64].clone()}
                for g in grads
            ]
        torch.save(grads, GRADS_OUT.replace("{rank}", str(rank())))


def _max_rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def patch_cpu(ft) -> None:
    """No CUDA: CPU autocast, CPU device, DDP without device_ids."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    real_autocast = torch.autocast

    class autocast(real_autocast):
        def __init__(self, device_type, *a, **k):
            super().__init__("cpu" if device_type == "cuda" else device_type, *a, **k)

    torch.autocast = autocast
    torch.cuda.set_device = lambda *a, **k: None
    real_state = ft.PartialState

    class PartialState:
        def __init__(self, *a, **k):
            self._s = real_state(*a, **k)

        local_process_index = property(lambda self: torch.device("cpu"))

        def __getattr__(self, name):
            return getattr(self._s, name)

    ft.PartialState = PartialState

    def wrap_ddp(module, device_id, find_unused=False):
        return DDP(module, find_unused_parameters=find_unused, gradient_as_bucket_view=True)

    ft.wrap_ddp = wrap_ddp


def patch_ddp_head_sync(ft, cuda: bool) -> None:
    """Test reference only (FSDP_CHECK_DDP_SYNC_HEAD=1): upstream's DDP never averages the action
    head's gradients -- run_forward_pass calls `action_head.module.predict_action`, which bypasses
    DDP.forward, so DDP's reducer never expects the head's gradient hooks and each rank trains its
    own head. This routes predict_action through DDP.forward (same parameters, same state_dict keys)
    so that a DDP run can be compared with FSDP, which does average them."""
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    real_wrap = ft.wrap_ddp

    class PredictForward(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return type(self.head).predict_action(self.head, x)

    class HeadViaDDP(nn.Module):
        def __init__(self, head, device_id, find_unused):
            super().__init__()
            self.module = head
            kw = {"device_ids": [device_id]} if cuda else {}
            ddp = DDP(PredictForward(head), find_unused_parameters=find_unused, gradient_as_bucket_view=True, **kw)
            object.__setattr__(self, "_ddp", ddp)  # not a submodule: state_dict keys stay `module.*`
            head.predict_action = lambda x: ddp(x)

    def wrap_ddp(module, device_id, find_unused=False):
        if type(module).forward is nn.Module.forward and hasattr(module, "predict_action"):
            return HeadViaDDP(module, device_id, find_unused)
        return real_wrap(module, device_id, find_unused)

    ft.wrap_ddp = wrap_ddp


ft_cfg = None


def main() -> None:
    global ft_cfg
    import draccus
    import torch

    rp_stubs.install()
    if TINY:  # also for a saved tiny model loaded by --resume
        rp_upstream.shrink_timm_for_tiny()
    cuda = torch.cuda.is_available()
    cap = os.environ.get("VLA_LAUNCH_VRAM_CAP_BYTES")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if cap:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, int(cap) / total))
    ft = finetune_fsdp.import_finetune(finetune_fsdp.locate_finetune_script())
    if not cuda:
        patch_cpu(ft)
    patch_io(ft, cuda)
    if os.environ.get("FSDP_CHECK_DDP_SYNC_HEAD") == "1":
        patch_ddp_head_sync(ft, cuda)
    cfg = draccus.parse(config_class=finetune_fsdp.extend_config(ft))
    ft_cfg = cfg
    wrapper = finetune_fsdp.install(ft, cfg)
    global WRAPPER
    WRAPPER = wrapper
    real_save = ft.save_training_checkpoint  # upstream's (DDP) or finetune_fsdp's (FSDP)

    def save(*a, **k):
        RECORD["_saving"] = True
        t0 = time.time()
        try:
            real_save(*a, **k)
        finally:
            RECORD["_saving"] = False
        RECORD["events"].append({"save_s": time.time() - t0, "max_rss_kib": _max_rss_kib()})

    ft.save_training_checkpoint = save
    if os.environ.get("FSDP_CHECK_LOCAL_CLOCK") == "1":
        ft.time = time  # negative test: each rank's own clock in run_validation, as upstream

    peak = {}
    sampler = None
    if cuda:
        try:
            from probe import nvml

            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            sampler = nvml.NvmlSampler(uuid).start()
        except Exception as e:  # report, don't fail: torch's peaks are the primary figures
            RECORD["events"].append({"nvml_error": repr(e)})
            sampler = None
    t0 = time.time()
    error = None
    try:
        ft.finetune.__wrapped__(cfg)
    except BaseException as e:  # record, then re-raise
        error = repr(e)[:2000]
        raise
    finally:
        if cuda:
            peak = {
                "peak_alloc_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            }
        if sampler is not None:
            sampler.stop()
            peak["peak_nvml_used_bytes"] = sampler.peak_v1
            peak["peak_nvml_used_v2_bytes"] = sampler.peak_v2
        RECORD.pop("_saving", None)
        RECORD.update(peak)
        RECORD.update(
            {
                "rank": rank(),
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "tiny": TINY,
                "seed": SEED,
                "use_fsdp": cfg.use_fsdp,
                "gradient_checkpointing": cfg.gradient_checkpointing,
                "batch_size": cfg.batch_size,
                "grad_accumulation_steps": cfg.grad_accumulation_steps,
                "fsdp_units": wrapper.units,
                "fsdp_impl": wrapper.impl,
                "vram_cap_bytes": int(cap) if cap else None,
                "device_name": torch.cuda.get_device_name() if cuda else "cpu",
                "torch": torch.__version__,
                "wall_s": time.time() - t0,
                "error": error,
                "max_rss_kib": _max_rss_kib(),
            }
        )
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"rank{rank()}.json").write_text(json.dumps(RECORD, indent=1) + "\n")


if __name__ == "__main__":
    main()
