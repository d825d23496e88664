"""Find an OpenVLA-OFT checkout, import its vla-scripts/finetune.py as a module, and build the model the way
finetune.py does (random weights instead of `from_pretrained`)."""

from __future__ import annotations

import os

FINETUNE = os.path.join("vla-scripts", "finetune.py")
DIR_FLAG = "--openvla_oft_dir"


class CheckoutError(Exception):
    pass


def take_dir_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove `--openvla_oft_dir X` / `--openvla_oft_dir=X` from argv (draccus must not see it)."""
    out, found, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == DIR_FLAG:
            if i + 1 >= len(argv):
                raise CheckoutError(f"{DIR_FLAG} needs a value: the path of an openvla-oft checkout")
            found, i = argv[i + 1], i + 2
            continue
        if a.startswith(DIR_FLAG + "="):
            found = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return found, out


def find_checkout(flag_value: str | None) -> str:
    """The checkout from --openvla_oft_dir, else $OPENVLA_OFT_DIR, else the working directory."""
    for source, d in (
        (DIR_FLAG, flag_value),
        ("OPENVLA_OFT_DIR", os.environ.get("OPENVLA_OFT_DIR")),
        ("the working directory", os.getcwd() if flag_value is None else None),
    ):
        if not d:
            continue
        d = os.path.abspath(d)
        if os.path.isfile(os.path.join(d, FINETUNE)) and os.path.isdir(os.path.join(d, "prismatic")):
            return d
        if source != "the working directory":
            raise CheckoutError(
                f"{source}={d!r} is not an openvla-oft checkout (no {FINETUNE} or prismatic/ "
                f"in it); fix: point it at a clone of moojink/openvla-oft"
            )
    raise CheckoutError(
        f"no openvla-oft checkout: set OPENVLA_OFT_DIR or pass {DIR_FLAG} PATH (a clone of "
        f"moojink/openvla-oft with {FINETUNE}), or run from inside one"
    )


def import_finetune(checkout: str):
    """Import the checkout's finetune.py as module `openvla_oft_finetune` (its `prismatic` and
    `experiments` packages come from the checkout)."""
    from pathlib import Path

    from vlalaunch.upstream import import_finetune_script

    return import_finetune_script(Path(checkout, FINETUNE))


def openvla_7b_config(tiny: bool):
    """An OpenVLAConfig with openvla/openvla-7b's architecture (its config.json's fields, written here;
    nothing is downloaded). `tiny`: a 2-layer, 64-wide Llama for CPU wiring tests (the vocabulary stays
    32064: the action tokens are its last 256 ids)."""
    from prismatic.extern.hf.configuration_prismatic import OpenVLAConfig

    text = {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064}
    if tiny:
        text.update(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
        )
    return OpenVLAConfig(
        vision_backbone_id="dinosiglip-vit-so-224px",
        llm_backbone_id="llama2-7b-pure",
        arch_specifier="no-align+fused-gelu-mlp",
        use_fused_vision_backbone=True,
        image_resize_strategy="resize-naive",
        text_config=text,
        llm_max_length=2048,
        pad_token_id=32000,
        pad_to_multiple_of=64,
        n_action_bins=256,
        norm_stats=None,
        torch_dtype="bfloat16",
    )


def shrink_timm_for_tiny() -> None:
    """Tiny mode only: the ViTs' ids are fixed by the config, so make timm build 3-block, 32/48-wide
    versions of them (patch 14 and 224 px kept: 256 patches per image, as the real model)."""
    import timm

    real_create = timm.create_model

    def create(model_id, *args, **kwargs):
        width = 48 if "siglip" in model_id else 32
        kwargs.update(depth=3, embed_dim=width, num_heads=2)
        return real_create(model_id, *args, **kwargs)

    timm.create_model = create


def build_vla(tiny: bool, device):
    """OpenVLAForActionPrediction in bf16 on `device` with random weights, through transformers'
    `_from_config` (the attention implementation is chosen by the same `_autoset_attn_implementation`
    that `from_pretrained` runs), then `.eval()` as `from_pretrained` leaves it."""
    import torch
    from prismatic.extern.hf.modeling_prismatic import OpenVLAForActionPrediction

    if tiny:
        shrink_timm_for_tiny()
    config = openvla_7b_config(tiny)
    if torch.device(device).type == "meta":
        # parameters only on meta, as from_pretrained(low_cpu_mem_usage=True) builds (timm needs real scalars)
        from accelerate import init_empty_weights

        ctx = init_empty_weights()
    else:
        ctx = torch.device(device)
    with ctx:
        vla = OpenVLAForActionPrediction._from_config(config, torch_dtype=torch.bfloat16)
    vla.eval()
    return vla
