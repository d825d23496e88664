#!/usr/bin/env python3
"""Compare two OpenVLA-OFT checkpoint directories (e.g. one saved under DDP, one under FSDP) and
load each with upstream's own evaluation code (experiments/robot/openvla_utils.py: get_vla,
get_action_head, get_proprio_projector), then run both on the same synthetic batch through
finetune.py's run_forward_pass.

    python compare_ckpt.py DIR_A DIR_B --dataset_name aloha1_x --use_film True \\
        --num_images_in_input 3 --use_proprio True [--lora_rank 32] --out result.json

Writes one JSON object: the files of each directory, per file the keys/shapes/dtypes that differ
(must be none) and the largest absolute difference of the values, then per directory the L1 loss
and the predicted actions on the batch, and their differences. Exit code 1 if names, keys, shapes
or dtypes differ. Environment as check_train.py (FSDP_CHECK_TINY, FSDP_CHECK_SEED, REAL_PROBE_DIR,
VLA_FINETUNE_SCRIPT or the checkout as working directory); the batch is rank 0's first synthetic
batch of check_train.py with the same seed, so a resumed run's first loss can be compared with it.
"""

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent

import finetune_fsdp  # noqa: E402
from real_probe import data as rp_data  # noqa: E402
from real_probe import stubs as rp_stubs  # noqa: E402
from real_probe import upstream as rp_upstream  # noqa: E402

TINY = os.environ.get("FSDP_CHECK_TINY") == "1"
SEED = int(os.environ.get("FSDP_CHECK_SEED", "1234"))


def tensors_of(directory: Path) -> dict:
    """{relative file name: {key: tensor}} for every .pt and .safetensors file."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.rglob("*")):
        rel = str(f.relative_to(directory))
        if f.suffix == ".pt":
            out[rel] = torch.load(f, weights_only=True, map_location="cpu")
        elif f.suffix == ".safetensors":
            out[rel] = load_file(str(f))
    return out


# written into a checkpoint directory by openvla_utils.get_vla itself (update_auto_map and
# check_model_logic_mismatch), not by training
EVAL_WRITTEN = ("modeling_prismatic.py", "configuration_prismatic.py")


def saved_names(d: Path) -> list:
    return sorted(
        str(p.relative_to(d))
        for p in d.rglob("*")
        if p.is_file() and p.name not in EVAL_WRITTEN and ".back." not in p.name
    )


def compare_files(a: Path, b: Path) -> dict:
    names_a, names_b = saved_names(a), saved_names(b)
    ta, tb = tensors_of(a), tensors_of(b)
    files = {}
    structural = []
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            structural.append(f"{name}: only in {'A' if name in ta else 'B'}")
            continue
        da, db = ta[name], tb[name]
        if list(da) != list(db):
            structural.append(f"{name}: keys differ ({len(set(da) ^ set(db))} not shared, or another order)")
        diff = 0.0
        for k in da:
            if k not in db:
                continue
            x, y = da[k], db[k]
            if x.shape != y.shape or x.dtype != y.dtype:
                structural.append(f"{name}:{k}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
                continue
            if x.numel():
                diff = max(diff, (x.float() - y.float()).abs().max().item())
        files[name] = {"keys": len(da), "max_abs_diff": diff}
    # non-tensor files that must be the same
    for name in ("lora_adapter/adapter_config.json",):
        if (a / name).is_file() and (b / name).is_file():
            ca, cb = (json.loads((d / name).read_text()) for d in (a, b))
            for c in (ca, cb):  # peft writes this set in the process's (hash-seeded) set order
                if isinstance(c.get("target_modules"), list):
                    c["target_modules"] = sorted(c["target_modules"])
            if ca != cb:
                structural.append(f"{name}: contents differ")
    return {
        "names_a": names_a,
        "names_b": names_b,
        "names_equal": names_a == names_b,
        "structural_differences": structural,
        "tensor_files": files,
    }


def evaluate(ft, ou, directory: Path, args, batch) -> dict:
    """Load with openvla_utils as the evaluation scripts do; run finetune.py's run_forward_pass."""
    import torch

    cfg = SimpleNamespace(
        pretrained_checkpoint=str(directory),
        use_film=args.use_film,
        num_images_in_input=args.num_images_in_input,
        load_in_8bit=False,
        load_in_4bit=False,
        lora_rank=args.lora_rank,
        use_l1_regression=True,
        use_diffusion=False,
        use_proprio=args.use_proprio,
    )
    vla = ou.get_vla(cfg)
    head = ou.get_action_head(cfg, vla.llm_dim)
    proprio = ou.get_proprio_projector(cfg, vla.llm_dim, ft.PROPRIO_DIM) if args.use_proprio else None
    captured = {}

    class HeadHolder:  # run_forward_pass reaches the head through DDP's `.module`
        class module:
            @staticmethod
            def predict_action(x):
                captured["actions"] = head.predict_action(x)
                return captured["actions"]

    vla.eval()
    # In training DDP's forward moves every tensor input to the GPU (proprio and labels included,
    # which run_forward_pass passes as they come); here there is no DDP, so move them as upstream's
    # evaluation code does with its own inputs.
    batch = {k: v.to(ou.DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
    num_patches = vla.vision_backbone.get_num_patches() * vla.vision_backbone.get_num_images_in_input()
    if args.use_proprio:
        num_patches += 1
    with torch.no_grad():
        _, metrics = ft.run_forward_pass(
            vla=vla,
            action_head=HeadHolder,
            noisy_action_projector=None,
            proprio_projector=proprio,
            batch=batch,
            action_tokenizer=None,
            device_id=ou.DEVICE,
            use_l1_regression=True,
            use_diffusion=False,
            use_proprio=args.use_proprio,
            use_film=args.use_film,
            num_patches=num_patches,
        )
    return {"loss": float(metrics["loss_value"]), "actions": captured["actions"].float().cpu()}


def first_batch(ft, args):
    """check_train.py's rank-0 stream, first batch."""
    import numpy as np

    tok = rp_data.StandInTokenizer()
    transform = ft.RLDSBatchTransform(
        ft.ActionTokenizer(tok),
        tok,
        image_transform=rp_data.image_processor().apply_transform,
        prompt_builder_fn=ft.PurePromptBuilder,
        use_wrist_image=args.num_images_in_input > 1,
        use_proprio=args.use_proprio,
    )
    platform = "ALOHA" if ft.ACTION_DIM == 14 else ("LIBERO" if ft.NUM_ACTIONS_CHUNK == 8 else "BRIDGE")
    rng = np.random.default_rng(SEED)
    consts = (ft.NUM_ACTIONS_CHUNK, ft.ACTION_DIM, ft.PROPRIO_DIM)
    samples = [
        transform(rp_data.rlds_sample(rng, args.dataset_name, platform, args.num_images_in_input, *consts))
        for _ in range(args.batch_size)
    ]
    collator = ft.PaddedCollatorForActionPrediction(tok.model_max_length, tok.pad_token_id, padding_side="right")
    return collator(samples)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dir_a", type=Path)
    p.add_argument("dir_b", type=Path)
    p.add_argument("--dataset_name", required=True)  # sets the platform constants (argv is searched)
    p.add_argument("--use_film", type=lambda s: s == "True", default=False)
    p.add_argument("--use_proprio", type=lambda s: s == "True", default=False)
    p.add_argument("--num_images_in_input", type=int, default=1)
    p.add_argument("--lora_rank", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--files_only", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON (upstream prints to stdout)")
    args = p.parse_args()

    import torch

    result = {"files": compare_files(args.dir_a, args.dir_b)}
    if not args.files_only:
        rp_stubs.install()
        if TINY:
            rp_upstream.shrink_timm_for_tiny()
        ft = finetune_fsdp.import_finetune(finetune_fsdp.locate_finetune_script())
        import experiments.robot.openvla_utils as ou

        if not torch.cuda.is_available():
            real_autocast = torch.autocast

            class autocast(real_autocast):
                def __init__(self, device_type, *a, **k):
                    super().__init__("cpu" if device_type == "cuda" else device_type, *a, **k)

            torch.autocast = autocast
        batch = first_batch(ft, args)
        ea = evaluate(ft, ou, args.dir_a, args, batch)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        eb = evaluate(ft, ou, args.dir_b, args, batch)
        diff = (ea["actions"] - eb["actions"]).abs()
        result["eval"] = {
            "loss_a": ea["loss"],
            "loss_b": eb["loss"],
            "actions_max_abs_diff": diff.max().item(),
            "actions_mean_abs": ea["actions"].abs().mean().item(),
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["files"]["structural_differences"] or not result["files"]["names_equal"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
