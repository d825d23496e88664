"""finetune.py's draccus flags (upstream defaults) plus the fork's and the probe's own, parsed the
draccus way: `--name value`, booleans True/False, unknown flag -> exit 2 before any GPU work."""

from __future__ import annotations

import sys
from types import SimpleNamespace

# (name, type, default); types print in --help as draccus does (`--name TYPE`)
FLAGS = [
    ("vla_path", "str", "openvla/openvla-7b"),
    ("data_root_dir", "Path", "datasets/rlds"),
    ("dataset_name", "str", "aloha_scoop_x_into_bowl"),
    ("run_root_dir", "Path", "runs"),
    ("shuffle_buffer_size", "int", 100_000),
    ("use_l1_regression", "bool", True),
    ("use_diffusion", "bool", False),
    ("num_diffusion_steps_train", "int", 50),
    ("use_film", "bool", False),
    ("num_images_in_input", "int", 1),
    ("use_proprio", "bool", False),
    ("batch_size", "int", 8),
    ("learning_rate", "float", 5e-4),
    ("lr_warmup_steps", "int", 0),
    ("num_steps_before_decay", "int", 100_000),
    ("grad_accumulation_steps", "int", 1),
    ("max_steps", "int", 200_000),
    ("use_val_set", "bool", False),
    ("val_freq", "int", 10_000),
    ("val_time_limit", "int", 180),
    ("save_freq", "int", 10_000),
    ("save_latest_checkpoint_only", "bool", False),
    ("resume", "bool", False),
    ("resume_step", "Optional[int]", None),
    ("image_aug", "bool", True),
    ("diffusion_sample_freq", "int", 50),
    ("use_lora", "bool", True),
    ("lora_rank", "int", 32),
    ("lora_dropout", "float", 0.0),
    ("merge_lora_during_training", "bool", True),
    ("wandb_entity", "str", "your-wandb-entity"),
    ("wandb_project", "str", "your-wandb-project"),
    ("run_id_note", "Optional[str]", None),
    ("run_id_override", "Optional[str]", None),
    ("wandb_log_freq", "int", 10),
    # the user's fork (seed-memory-analysis section 5.3)
    ("use_fsdp", "bool", False),
    ("gradient_checkpointing", "bool", False),
    # probe only
    ("count_params_only", "bool", False),
    ("probe_instructions", "str", "varied"),  # varied: padded batches as real data; fixed: one instruction
]

# LIBERO / ALOHA / BRIDGE constants, chosen like OFT's constants.py: from words on the command line
PLATFORMS = {
    "LIBERO": dict(chunk=8, action_dim=7, proprio_dim=8),
    "ALOHA": dict(chunk=25, action_dim=14, proprio_dim=14),
    "BRIDGE": dict(chunk=5, action_dim=7, proprio_dim=7),
}


def detect_platform(argv: list[str]) -> str:
    words = " ".join(argv).lower()
    for key in ("libero", "aloha", "bridge"):
        if key in words:
            return key.upper()
    return "LIBERO"


def _usage(prog: str) -> str:
    return f"usage: {prog} [-h] " + " ".join(f"[--{n} {t}]" for n, t, _ in FLAGS[:4]) + " ..."


def _fail(prog: str, msg: str):
    print(_usage(prog), file=sys.stderr)
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _convert(prog: str, name: str, typ: str, raw: str):
    if typ.startswith("Optional") and raw.lower() in ("none", "null", ""):
        return None
    base = typ.removeprefix("Optional[").rstrip("]")
    try:
        if base == "bool":
            low = raw.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if base == "int":
            return int(raw)
        if base == "float":
            return float(raw)
        return raw
    except ValueError:
        _fail(prog, f"argument --{name}: invalid {base} value: '{raw}'")


def print_help(prog: str) -> None:
    print(_usage(prog))
    print("\nOpenVLA-OFT memory probe: finetune.py's flags (random weights, synthetic batches)\n")
    for name, typ, default in FLAGS:
        print(f"  --{name} {typ}    (default: {default})")


def parse(argv: list[str], prog: str = "probe_finetune.py") -> SimpleNamespace:
    known = {n: (t, d) for n, t, d in FLAGS}
    values = {n: d for n, (t, d) in known.items()}
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print_help(prog)
            raise SystemExit(0)
        if not tok.startswith("--"):
            unknown.append(tok)
            i += 1
            continue
        name, eq, inline = tok[2:].partition("=")
        name = name.replace("-", "_")
        if name not in known:  # listed with its value, as argparse does
            takes_value = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            unknown.extend(argv[i : i + 2] if takes_value else [tok])
            i += 2 if takes_value else 1
            continue
        if eq:
            raw = inline
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            _fail(prog, f"argument --{name}: expected one argument")
        values[name] = _convert(prog, name, known[name][0], raw)
    if unknown:
        _fail(prog, "unrecognized arguments: " + " ".join(unknown))
    return SimpleNamespace(**values)
