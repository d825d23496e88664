#!/usr/bin/env python3
"""CPU checks of where the real code's activation memory could differ from the stand-in probe's, for
whichever transformers is importable (run once with the pinned fork 4.40.1, once with the 5.x the probe
uses). bf16 weights, CPU bf16 autocast, real widths (h 4096, I 11008, vocab 32064).

  layer N peft|probe : bytes autograd saves per token in a 1-layer LlamaModel + final norm, LoRA r=32 on
                       the 7 linears (peft's, or scripts/probe/model.py's LoRALinear)
  head N             : peak memory (profiler memory timeline, parameters excluded) of the final norm,
                       lm_head, logits and loss, forward and backward, 0 decoder layers
Used for docs/validation.md section 16. CUDA may differ (kernels, autocast lists): a lead, not a GPU figure.
Run with scripts/ on the path: `PYTHONPATH=scripts python scripts/real_probe/cpu_memory_check.py`.
"""

import os
import sys

import torch
import torch.nn as nn
import transformers
from transformers import LlamaConfig

H, FFN, R, V = 4096, 11008, 32, 32064
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config(layers: int, vocab: int) -> LlamaConfig:
    cfg = LlamaConfig(
        hidden_size=H,
        intermediate_size=FFN,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=layers,
        vocab_size=vocab,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def layer(s: int, lora: str) -> None:
    from transformers import LlamaModel

    m = LlamaModel(config(1, 256)).to(torch.bfloat16).requires_grad_(False)
    if lora == "peft":
        from peft import LoraConfig, get_peft_model

        m = get_peft_model(m, LoraConfig(r=R, lora_alpha=16, target_modules=TARGETS, init_lora_weights="gaussian"))
    else:
        from probe.model import LoRALinear

        for mod in list(m.modules()):
            for name, child in list(mod.named_children()):
                if name in TARGETS and isinstance(child, nn.Linear):
                    setattr(mod, name, LoRALinear(child, R, 16, 0.0).to(torch.bfloat16))
    params = {p.data_ptr() for p in m.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen.setdefault(t.data_ptr(), t.numel() * t.element_size())
        return t

    x = torch.randn(1, s, H, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        m(inputs_embeds=x, attention_mask=torch.ones(1, s, dtype=torch.bool), output_hidden_states=True)
    print(
        f"transformers {transformers.__version__}, LoRA {lora}: {sum(seen.values()) / s:.0f} B per token saved "
        "(1 decoder layer + final norm)"
    )


def head(s: int) -> None:
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM(config(0, V)).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(1, s, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.full((1, s), -100)
    labels[0, -min(60, s) :] = torch.randint(0, V, (min(60, s),))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(inputs_embeds=x, labels=labels, output_hidden_states=True).loss
        loss.backward()  # finetune.py's run_forward_pass keeps only the loss past its return

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    # column 0 is unused, column 1 the parameters (the categories of torch.profiler._memory_profiler)
    peak = max(sum(row) - row[1] for row in sizes)
    print(
        f"transformers {transformers.__version__}: LM head + loss, forward + backward: peak {peak / s:.0f} B per token "
        f"({peak / s / (4 * V):.2f} fp32 vocabulary rows), parameters excluded, s={s}"
    )


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    layer(n, sys.argv[3]) if mode == "layer" else head(n)
