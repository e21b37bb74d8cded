"""Muse's super-resolution transformer (Muse Sec. 2.4, Fig. 4): a low-res encoder feeding cross-attention.

Fig. 4: "Low-resolution tokens are passed into a series of self-attention Transformer layers; and
the resulting output embeddings are concatenated with text embeddings extracted from the
conditioning text prompt. Following this, cross-attention is applied from these concatenated
embeddings to the masked high-resolution tokens." :class:`MuseSuperResTransformer` is exactly that
on top of :class:`lib.generation.MaskedTokenTransformer`: the low-res tokens (embedded with their
own table and 2-D positions) go through ``low_res_depth`` self-attention blocks of their own; their
outputs are appended to the projected text as cross-attention memory of every high-res block; the
high-res sequence holds only the high-res tokens.

The other form, ``super_res.low_res_mode: joint``, is the base class with ``low_res`` set: the
low-res tokens are prepended to the high-res sequence and every layer attends jointly over both
(cheap at our <= 16x16 grids; Muse's cross-attention form is what keeps its 64x64 = 4096-token
sequence tractable). The stage trains ``super_res.low_res_mode`` and, with
``super_res.compare_forms``, the other form too; notebook 03c scores both.

Classifier-free guidance: a text-dropped row (``cond.drop``, or no text) gets the learned null text
in place of the text part of the memory, and keeps the low-res part, so guidance contrasts text with
no text at fixed low-res content (as in the joint form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lib.config import SUPER_RES_LOW_RES_MODES as LOW_RES_MODES  # the one list; params.yaml is checked against it
from lib.generation import MaskedTokenTransformer, TransformerConfig, load_generator
from lib.generation.layers import Block, init_weights
from lib.io import AtelierInputError, load_checkpoint, load_model_state

__all__ = ["LOW_RES_MODES", "MuseSuperResTransformer", "build_super_res_model", "load_super_res_model"]


class MuseSuperResTransformer(MaskedTokenTransformer):
    """High-res masked-token transformer whose cross-attention memory is [text ; low-res encoder
    outputs] (Muse Fig. 4). ``config`` must have ``low_res`` set and ``text_mode="cross_attention"``."""

    arch_name = "muse_super_res"

    def __init__(self, config: TransformerConfig | dict, low_res_depth: int = 2):
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        if config.low_res is None or config.text_mode != "cross_attention":
            raise AtelierInputError(f"MuseSuperResTransformer: needs low_res=(h, w, c, k) and text_mode="
                                    f"'cross_attention', got low_res={config.low_res!r}, text_mode={config.text_mode!r}")
        if isinstance(low_res_depth, bool) or not isinstance(low_res_depth, int) or low_res_depth < 1:
            raise AtelierInputError(f"MuseSuperResTransformer: low_res_depth must be an integer >= 1, got {low_res_depth!r}")
        super().__init__(config)
        c = self.config
        self.low_res_depth = low_res_depth
        self.low_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.dropout) for _ in range(low_res_depth))
        self.low_norm = nn.LayerNorm(c.dim)
        self.low_blocks.apply(init_weights)
        self.low_norm.apply(init_weights)

    @property
    def arch(self) -> dict[str, Any]:
        return {**super().arch, "low_res_depth": self.low_res_depth}

    def encode_low_res(self, cond, batch: int) -> torch.Tensor:
        """The low-res encoder of Fig. 4: ``[B, Nl, dim]`` after its self-attention blocks."""
        x, _ = self._low_res_prefix(cond, batch)
        x = self.drop(x)
        for block in self.low_blocks:
            x = block(x)
        return self.low_norm(x)

    low_res_in_sequence = False  # Fig. 4: the low-res tokens are the memory, not the sequence

    def extra_memory(self, cond, batch: int):
        """The low-res encoder outputs after the text in every high-res block's cross-attention
        memory (cached across decoding steps with it; a text-dropped row keeps them)."""
        low = self.encode_low_res(cond, batch)
        return low, torch.ones(batch, low.shape[1], dtype=torch.bool, device=low.device)


def build_super_res_model(config: TransformerConfig, low_res_mode: str = "cross_attention",
                          low_res_depth: int = 2) -> MaskedTokenTransformer:
    """The super-res transformer of ``super_res.low_res_mode`` (see the module docstring)."""
    if low_res_mode == "cross_attention":
        return MuseSuperResTransformer(config, low_res_depth)
    if low_res_mode == "joint":
        return MaskedTokenTransformer(config)
    raise AtelierInputError(f"super_res.low_res_mode must be one of {LOW_RES_MODES}, got {low_res_mode!r}")


def load_super_res_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> MaskedTokenTransformer:
    """Either form from its checkpoint (the header's ``arch`` says which), in eval mode."""
    tensors, meta = load_checkpoint(ckpt_path)
    arch = dict(meta.get("arch") or {})
    if arch.get("name") != MuseSuperResTransformer.arch_name:
        return load_generator(ckpt_path, device)[0]
    depth = arch.pop("low_res_depth", None)
    for key in ("name", "objective"):
        arch.pop(key, None)
    model = MuseSuperResTransformer(TransformerConfig.from_dict(arch), depth)
    load_model_state(model, tensors, ckpt_path, what="the super-res model")
    return model.to(device).eval()
