"""The OpenVLA-OFT model's shapes and dtypes in plain torch (random weights), for the memory probe.

Hand-written so the GPU machine needs neither timm nor peft: the two ViTs follow timm's
vit_large_patch14_reg4_dinov2 and vit_so400m_patch14_siglip_224 (img_size 224, num_classes 0)
parameter for parameter, and LoRA follows peft's Linear/Conv2d adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTDims:
    dim: int
    depth: int
    heads: int
    mlp: int
    reg_tokens: int  # DINOv2-reg4 only; SigLIP has no prefix tokens
    layer_scale: bool
    gelu_tanh: bool
    attn_pool: bool


@dataclass(frozen=True)
class Dims:
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_intermediate: int
    vocab: int
    dino: ViTDims
    siglip: ViTDims
    img: int
    patch: int
    prompt_tokens: int  # "In: What action should the robot take to ...?\nOut:" (ALOHA 1144 = 1+768+1+23+350+1)

    @property
    def patches_per_image(self) -> int:
        return (self.img // self.patch) ** 2

    @property
    def vision_dim(self) -> int:
        return self.dino.dim + self.siglip.dim


FULL = Dims(
    llm_hidden=4096,
    llm_layers=32,
    llm_heads=32,
    llm_intermediate=11008,
    vocab=32064,
    dino=ViTDims(1024, 24, 16, 4096, 4, True, False, False),
    siglip=ViTDims(1152, 27, 16, 4304, 0, False, True, True),
    img=224,
    patch=14,
    prompt_tokens=23,
)

# VLA_PROBE_TINY=1: every width and depth shrunk so a CPU can train it in seconds (docs/probe.md).
TINY = Dims(
    llm_hidden=64,
    llm_layers=2,
    llm_heads=4,
    llm_intermediate=128,
    vocab=256,
    dino=ViTDims(32, 3, 2, 128, 4, True, False, False),
    siglip=ViTDims(48, 3, 2, 96, 0, False, True, True),
    img=28,
    patch=14,
    prompt_tokens=5,
)


# ---------------------------------------------------------------- ViTs (timm layout)
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu_tanh: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu_tanh else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """timm's ViT Block; FiLM modulation (when given) sits between attention and MLP as in OFT."""

    def __init__(self, d: ViTDims):
        super().__init__()
        self.norm1 = nn.LayerNorm(d.dim, eps=1e-6)
        self.attn = Attention(d.dim, d.heads)
        self.ls1 = LayerScale(d.dim) if d.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d.dim, eps=1e-6)
        self.mlp = Mlp(d.dim, d.mlp, d.gelu_tanh)
        self.ls2 = LayerScale(d.dim) if d.layer_scale else nn.Identity()

    def forward(self, x, gamma=None, beta=None):
        x = x + self.ls1(self.attn(self.norm1(x)))
        if gamma is not None:
            x = x * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class AttentionPoolLatent(nn.Module):
    """SigLIP's MAP head: present in the checkpoint (and LoRA-targeted) but never run by OpenVLA."""

    def __init__(self, d: ViTDims):
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, 1, d.dim))
        self.q = nn.Linear(d.dim, d.dim)
        self.kv = nn.Linear(d.dim, 2 * d.dim)
        self.proj = nn.Linear(d.dim, d.dim)
        self.norm = nn.LayerNorm(d.dim, eps=1e-6)
        self.mlp = Mlp(d.dim, d.mlp, d.gelu_tanh)


class ViT(nn.Module):
    def __init__(self, d: ViTDims, dims: Dims):
        super().__init__()
        self.d = d
        self.patch_embed = PatchEmbed(d.dim, dims.patch)
        if d.reg_tokens:
            self.cls_token = nn.Parameter(torch.empty(1, 1, d.dim))
            self.reg_token = nn.Parameter(torch.empty(1, d.reg_tokens, d.dim))
        # DINOv2-reg and SigLIP: position embeddings for the patches only (no_embed_class)
        self.pos_embed = nn.Parameter(torch.empty(1, dims.patches_per_image, d.dim))
        self.blocks = nn.ModuleList(Block(d) for _ in range(d.depth))
        self.norm = nn.LayerNorm(d.dim, eps=1e-6)
        self.attn_pool = AttentionPoolLatent(d) if d.attn_pool else None

    def forward(self, x, film=None):
        """OpenVLA's get_intermediate_layers(n={depth-2}): every block runs, the output of the
        second-to-last one is returned without prefix tokens."""
        x = self.patch_embed(x) + self.pos_embed
        prefix = 0
        if self.d.reg_tokens:
            b = x.shape[0]
            x = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), x], dim=1)
            prefix = 1 + self.d.reg_tokens
        take = len(self.blocks) - 2
        out = None
        for i, blk in enumerate(self.blocks):
            x = blk(x) if film is None else film[i](blk, x)
            if i == take:
                out = x
        return out[:, prefix:]


# ---------------------------------------------------------------- FiLM (OFT)
class FiLMedBlock(nn.Module):
    """scale/shift Linear(llm_dim -> dim) per block, driven by the mean language embedding (fp32)."""

    def __init__(self, llm_dim: int, dim: int):
        super().__init__()
        self.scale = nn.Linear(llm_dim, dim)
        self.shift = nn.Linear(llm_dim, dim)


class FiLM(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        self.dino = nn.ModuleList(FiLMedBlock(dims.llm_hidden, dims.dino.dim) for _ in range(dims.dino.depth))
        self.siglip = nn.ModuleList(FiLMedBlock(dims.llm_hidden, dims.siglip.dim) for _ in range(dims.siglip.depth))


class FiLMCall:
    """Per-block callable handed to ViT.forward so FSDP sees the FiLM Linears and the block as units."""

    def __init__(self, films: nn.ModuleList, lang: torch.Tensor):
        self.films, self.lang = films, lang

    def __getitem__(self, i):
        f = self.films[i]

        def call(blk, x):
            return blk(x, f.scale(self.lang), f.shift(self.lang))

        return call


class VisionBackbone(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        self.featurizer = ViT(dims.dino, dims)
        self.fused_featurizer = ViT(dims.siglip, dims)
        self.film = None  # set by wrap_film (after LoRA, like finetune.py)

    def forward(self, pixel_values: torch.Tensor, num_images: int, lang=None) -> torch.Tensor:
        feats = []
        for img in torch.split(pixel_values, 6, dim=1):
            dino_in, siglip_in = torch.split(img, 3, dim=1)
            fd = FiLMCall(self.film.dino, lang) if self.film is not None else None
            fs = FiLMCall(self.film.siglip, lang) if self.film is not None else None
            a = self.featurizer(dino_in, fd)
            b = self.fused_featurizer(siglip_in, fs)
            feats.append(torch.cat([a, b], dim=2))
        return torch.cat(feats, dim=1)


class Projector(nn.Module):
    """OpenVLA's fused-backbone projector: 2176 -> 8704 -> 4096 -> 4096, GELU between."""

    def __init__(self, dims: Dims):
        super().__init__()
        v = dims.vision_dim
        self.fc1 = nn.Linear(v, 4 * v)
        self.fc2 = nn.Linear(4 * v, dims.llm_hidden)
        self.fc3 = nn.Linear(dims.llm_hidden, dims.llm_hidden)
        self.act = nn.GELU()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


# ---------------------------------------------------------------- LoRA (peft layout)
class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: int, dropout: float):
        super().__init__()
        self.base_layer = base
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=base.weight.device)
        self.lora_B._probe_zero = True
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


class LoRAConv2d(nn.Module):
    def __init__(self, base: nn.Conv2d, r: int, alpha: int, dropout: float):
        super().__init__()
        self.base_layer = base
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dev = base.weight.device
        self.lora_A = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, bias=False, device=dev)
        self.lora_B = nn.Conv2d(r, base.out_channels, 1, 1, bias=False, device=dev)
        self.lora_B._probe_zero = True
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def apply_lora(root: nn.Module, r: int, dropout: float) -> None:
    """peft "all-linear" as OFT gets it: every Linear (lm_head included) and the patch-embed convs;
    base frozen, adapters trainable in the base dtype (bf16, as peft 0.11.1 leaves them)."""
    alpha = min(r, 16)
    for p in root.parameters():
        p.requires_grad_(False)
    targets = [(n, m) for n, m in root.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        cls = LoRALinear if isinstance(mod, nn.Linear) else LoRAConv2d
        wrapped = cls(mod, r, alpha, dropout).to(mod.weight.dtype)
        setattr(parent, child, wrapped)


# ---------------------------------------------------------------- heads
class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x):
        return x + self.ffn(x)


class L1ActionHead(nn.Module):
    """OFT's L1RegressionActionHead: MLPResNet(4096*A -> 4096, 2 blocks, -> A) over each chunk step."""

    def __init__(self, llm_dim: int, action_dim: int, chunk: int):
        super().__init__()
        self.chunk = chunk
        inp = llm_dim * action_dim
        self.layer_norm1 = nn.LayerNorm(inp)
        self.fc1 = nn.Linear(inp, llm_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(llm_dim) for _ in range(2))
        self.layer_norm2 = nn.LayerNorm(llm_dim)
        self.fc2 = nn.Linear(llm_dim, action_dim)

    def forward(self, actions_hidden: torch.Tensor) -> torch.Tensor:
        x = actions_hidden.reshape(actions_hidden.shape[0], self.chunk, -1)
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for blk in self.mlp_resnet_blocks:
            x = blk(x)
        return self.fc2(self.layer_norm2(x))


class ProprioProjector(nn.Module):
    def __init__(self, llm_dim: int, proprio_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x):
        return self.fc2(self.act_fn1(self.fc1(x)))


# ---------------------------------------------------------------- the VLA
def llama_config(dims: Dims):
    try:
        from transformers import LlamaConfig
    except Exception as e:  # pragma: no cover - depends on the machine
        raise SystemExit(
            f"probe_finetune.py: transformers with Llama is required ({e}); pip install transformers"
        ) from e
    cfg = LlamaConfig(
        hidden_size=dims.llm_hidden,
        intermediate_size=dims.llm_intermediate,
        num_hidden_layers=dims.llm_layers,
        num_attention_heads=dims.llm_heads,
        num_key_value_heads=dims.llm_heads,
        vocab_size=dims.vocab,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        pad_token_id=min(32000, dims.vocab - 1),
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    cfg._attn_implementation = "sdpa"  # older 5.x releases read only the attribute
    return cfg


class OpenVLA(nn.Module):
    """PrismaticForConditionalGeneration's training forward with OFT's additions (FiLM, proprio)."""

    def __init__(self, dims: Dims):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.dims = dims
        self.vision_backbone = VisionBackbone(dims)
        self.projector = Projector(dims)
        self.language_model = LlamaForCausalLM(llama_config(dims))

    def forward(
        self,
        input_ids,
        attention_mask,
        pixel_values,
        labels,
        action_mask,
        num_images,
        proprio=None,
        proprio_projector=None,
    ):
        emb = self.language_model.get_input_embeddings()(input_ids)
        lang = None
        if self.vision_backbone.film is not None:
            lang = emb[~action_mask].reshape(emb.shape[0], -1, emb.shape[2]).mean(dim=1)
        patches = self.projector(self.vision_backbone(pixel_values, num_images, lang))
        if proprio is not None:
            patches = torch.cat([patches, proprio_projector(proprio).unsqueeze(1)], dim=1)
        # OFT zeroes the action-token embeddings (parallel decoding from empty action slots)
        emb = emb * (~action_mask).unsqueeze(-1).to(emb.dtype)
        n = patches.shape[1]
        mm = torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)
        mm_mask = torch.cat(
            [attention_mask[:, :1], attention_mask.new_ones(patches.shape[:2]), attention_mask[:, 1:]], dim=1
        )
        mm_labels = torch.cat([labels[:, :1], labels.new_full(patches.shape[:2], -100), labels[:, 1:]], dim=1)
        # As upstream's transformers fork (4.40.1) under PrismaticForConditionalGeneration, which the
        # real code runs (docs/validation.md section 17, the allocator traces):
        # - `use_cache` reaches LlamaModel as None, so config.use_cache (True) applies unless gradient
        #   checkpointing turns it off; the output then carries every layer's K and V, and DDP with
        #   find_unused_parameters=True clones each tensor of the output at the end of the forward;
        # - LlamaForCausalLM returns fp32 logits (`logits.float()`) and takes the cross-entropy of a
        #   contiguous shifted copy, so the fp32 logits, their clone and the log-softmax are alive.
        lm = self.language_model
        use_cache = not (self.training and lm.is_gradient_checkpointing)
        out = lm(inputs_embeds=mm, attention_mask=mm_mask, output_hidden_states=True, use_cache=use_cache)
        logits = out.logits.float()
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = mm_labels[..., 1:].contiguous()
        loss = nn.functional.cross_entropy(shift_logits.view(-1, shift_logits.shape[-1]), shift_labels.view(-1))
        from transformers.modeling_outputs import CausalLMOutputWithPast

        out = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=legacy_kv(out.past_key_values), hidden_states=out.hidden_states
        )
        return out, n


def legacy_kv(cache):
    """The (K, V) tensors per layer of a transformers 5.x cache, as the fork's 4.40 returns them
    (a tuple of tuples, which DDP's output flattening reaches); None without a cache."""
    if cache is None:
        return None
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return tuple((layer.keys, layer.values) for layer in cache.layers)
    return tuple(zip(cache.key_cache, cache.value_cache))


def count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- cheap in-place init
_NORMS = ("LayerNorm", "RMSNorm")


def init_module_(module: nn.Module, device: torch.device) -> None:
    """Materialise one module's own (non-recursive) params/buffers on `device` with random values:
    the probe measures memory, so a normal_(0, 0.02) fill on the GPU is enough."""
    module.to_empty(device=device, recurse=False)
    is_norm = type(module).__name__.endswith(_NORMS)
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if getattr(module, "_probe_zero", False) or (name == "bias"):
                p.zero_()
            elif is_norm and name == "weight":
                p.fill_(1.0)
            elif isinstance(module, LayerScale):
                p.fill_(1e-5)
            else:
                p.normal_(0.0, 0.02)
    if type(module).__name__.endswith("RotaryEmbedding"):
        fresh = type(module)(module.config)  # non-persistent inv_freq buffers, computed on CPU
        for name, buf in fresh.named_buffers(recurse=False):
            getattr(module, name).copy_(buf.to(device))


def materialise_(root: nn.Module, device: torch.device) -> None:
    for m in root.modules():
        init_module_(m, device)
