"""Synthetic training samples pushed through upstream's own RLDSBatchTransform and
PaddedCollatorForActionPrediction, so the batches have exactly the real format."""

from __future__ import annotations

import re

import numpy as np

from vlalaunch import instructions


class StandInTokenizer:
    """The part of the Llama-2 tokenizer (openvla-7b's, vocab 32000 + pad) that RLDSBatchTransform and
    ActionTokenizer use, without tokenizer files: `vocab_size`, `decode`, `batch_decode` and
    `__call__(text, add_special_tokens=True).input_ids`.
    Action tokens (the last 256 ids of the 32000) decode to one private-use character each and encode back
    to the same id, as the real tokenizer does for them; other text is split into words and punctuation,
    one id each (the real SentencePiece split of the OFT prompt is of the same length, about 20-25 tokens);
    "</s>" is the stop token 2 and BOS 1 is prepended."""

    vocab_size = 32000
    pad_token_id = 32000
    bos_token_id, eos_token_id = 1, 2
    model_max_length = 2048
    _BASE = 0xF0000  # supplementary private-use plane: never produced by ordinary text

    class _Encoding:
        def __init__(self, ids):
            self.input_ids = ids

    def decode(self, ids, **_):
        return "".join(chr(self._BASE + int(i)) for i in ids)

    def batch_decode(self, rows, **_):
        return [self.decode([i]) if np.isscalar(i) else self.decode(i) for i in rows]

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [self.bos_token_id] if add_special_tokens else []
        for piece in re.findall(r"</s>|[\U000F0000-\U000FFFFD]|\w+|[^\w\s]", text):
            if piece == "</s>":
                ids.append(self.eos_token_id)
            elif len(piece) == 1 and self._BASE <= ord(piece) < self._BASE + self.vocab_size:
                ids.append(ord(piece) - self._BASE)
            else:  # a stable id among ordinary tokens (3 .. 31743, below the action bins)
                ids.append(3 + sum(piece.encode()) * 2654435761 % 31740)
        return self._Encoding(ids)


def image_processor():
    """openvla-7b's PrismaticImageProcessor (its preprocessor_config.json values): both ViTs at 224 px,
    resize-naive, DINOv2 with ImageNet mean/std and SigLIP with 0.5/0.5."""
    from prismatic.extern.hf.processing_prismatic import PrismaticImageProcessor

    return PrismaticImageProcessor(
        use_fused_vision_backbone=True,
        image_resize_strategy="resize-naive",
        input_sizes=[[3, 224, 224], [3, 224, 224]],
        interpolations=["bicubic", "bicubic"],
        means=[[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        stds=[[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
    )


def wrist_keys(num_images: int, platform: str) -> list[str]:
    """The RLDS observation keys of the extra cameras: LIBERO has one wrist camera, ALOHA a left and a
    right one (OFT's dataset configs)."""
    extra = num_images - 1
    if extra <= 0:
        return []
    names = ["image_left_wrist", "image_right_wrist"] if platform == "ALOHA" else ["image_wrist"]
    names += [f"image_wrist_{i}" for i in range(len(names), extra)]
    return names[:extra]


def rlds_sample(
    rng: np.random.Generator,
    dataset_name: str,
    platform: str,
    num_images: int,
    chunk: int,
    action_dim: int,
    proprio_dim: int,
    size: int = 224,
    instruction: str = instructions.FIXED,
) -> dict:
    """One sample as the RLDS pipeline hands it to RLDSBatchTransform (window 1, images already resized
    to the model's 224 px, actions chunk x dim normalised to [-1, 1]); the instruction only sets the
    prompt's length."""
    obs = {"image_primary": rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)}
    for k in wrist_keys(num_images, platform):
        obs[k] = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    obs["proprio"] = rng.uniform(-1, 1, (1, proprio_dim)).astype(np.float32)
    return {
        "dataset_name": dataset_name,
        "action": rng.uniform(-1, 1, (chunk, action_dim)).astype(np.float32),
        "observation": obs,
        "task": {"language_instruction": instruction.encode()},
    }


def make_loader(ft, cfg, platform: str, seed: int = 0, instruction_mode: str = "fixed"):
    """A DataLoader like finetune.py's (batch_size, PaddedCollatorForActionPrediction, no workers) over an
    endless stream of synthetic samples transformed by upstream's RLDSBatchTransform; `varied` draws
    each sample's instruction (vlalaunch.instructions), so batches are padded as real ones are."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    tok = StandInTokenizer()
    transform = ft.RLDSBatchTransform(
        ft.ActionTokenizer(tok),
        tok,
        image_transform=image_processor().apply_transform,
        prompt_builder_fn=ft.PurePromptBuilder,
        use_wrist_image=cfg.num_images_in_input > 1,
        use_proprio=cfg.use_proprio,
    )
    consts = (ft.NUM_ACTIONS_CHUNK, ft.ACTION_DIM, ft.PROPRIO_DIM)

    class Synthetic(IterableDataset):
        def __iter__(self):
            rng = np.random.default_rng(
                seed + (torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)
            )
            while True:
                text = instructions.draw(rng, platform, instruction_mode)
                yield transform(
                    rlds_sample(rng, cfg.dataset_name, platform, cfg.num_images_in_input, *consts, instruction=text)
                )

    collator = ft.PaddedCollatorForActionPrediction(tok.model_max_length, tok.pad_token_id, padding_side="right")
    return DataLoader(Synthetic(), batch_size=cfg.batch_size, sampler=None, collate_fn=collator, num_workers=0)
