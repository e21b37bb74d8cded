"""Composed image generation from Q-Former query outputs, with a masked token generator in the
diffusion model's place (UniFashion Sec. 3.1.2 Eq. 7 and Sec. 3.2.2 Eq. 12).

UniFashion's *task-specific adapter* linearly projects the query outputs ``q`` ``[B, Q, d]`` to the
width of the embeddings its diffusion U-Net cross-attends to. Phase 1 (Eq. 7) trains the adapter,
and fine-tunes the generator (Sec. 4.1), to reconstruct an image from its own queries with the
Q-Former frozen; phase 2 (Eq. 12) trains the Q-Former so that the *composed* query ``q_R``
(reference image + modification text) reconstructs the *target* image, the generator frozen.

Here the generator is the Muse-style :class:`lib.generation.MaskedTokenTransformer` whose text
pathway cross-attends to frozen MiniLM token features (``text_dim`` 384). The adapter maps ``q``
into that space, so the trained text-to-image model is the starting point (as the paper starts
from Stable Diffusion), and the denoising loss becomes the masked-token loss of Muse Sec. 2.3 with
the arccos masking rate (Sec. 2.6). Condition drop on ``cond_drop`` of the rows keeps classifier-free
guidance available at sampling time (Sec. 2.7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from lib.generation import Condition, MaskedTokenTransformer, TransformerConfig
from lib.generation.masking import random_mask
from lib.generation.transformer import masked_token_accuracy, masked_token_loss
from lib.io import AtelierInputError, load_checkpoint, load_model_state
from lib.training import ResumableTrainer, batch_indices, lr_factor, set_lr, step_seed

ARCH_NAME = "query_generator"


class QueryAdapter(nn.Module):
    """UniFashion's task-specific adapter for the generator: ``f_zeta(q)``, one linear map of every
    query output into the generator's text-feature space."""

    def __init__(self, query_dim: int, text_dim: int = 384):
        super().__init__()
        self.query_dim, self.text_dim = int(query_dim), int(text_dim)
        self.proj = nn.Linear(self.query_dim, self.text_dim)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.dim() != 3 or q.shape[-1] != self.query_dim:
            raise AtelierInputError(f"QueryAdapter: query outputs must be [B, Q, {self.query_dim}], "
                                    f"got {tuple(q.shape)}")
        return self.proj(q)


class QueryGenerator(nn.Module):
    """Adapter + masked token generator, saved and loaded as one checkpoint."""

    def __init__(self, adapter: QueryAdapter, generator: MaskedTokenTransformer):
        super().__init__()
        cfg = generator.config
        if cfg.text_mode != "cross_attention":
            raise AtelierInputError(f"QueryGenerator needs a generator with text_mode='cross_attention' (Muse), "
                                    f"got {cfg.text_mode!r}")
        if adapter.text_dim != cfg.text_dim:
            raise AtelierInputError(f"QueryAdapter maps to {adapter.text_dim} dims, the generator reads "
                                    f"{cfg.text_dim}-dim text features")
        self.adapter, self.generator = adapter, generator

    @property
    def config(self) -> TransformerConfig:
        return self.generator.config

    @property
    def arch(self) -> dict[str, Any]:
        return {"name": ARCH_NAME, "query_dim": self.adapter.query_dim, "generator": self.generator.config.to_dict()}

    def condition(self, q: torch.Tensor, drop: Optional[torch.Tensor] = None) -> Condition:
        """The generator's condition for query outputs ``q`` ``[B, Q, d]`` (``Q`` <= its
        ``max_text_len``); rows where ``drop`` get the null condition."""
        if q.shape[1] > self.config.max_text_len:
            raise AtelierInputError(f"{q.shape[1]} queries exceed the generator's max_text_len "
                                    f"({self.config.max_text_len})")
        return Condition(text_tokens=self.adapter(q), drop=drop)

    def loss(self, q: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, cond_drop: float = 0.0,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7 / Eq. 12 with masked tokens: ``(masked-token cross-entropy, accuracy)`` of target
        grids ``[B, N, C]`` under an arccos-rate random mask drawn from ``generator`` (CPU)."""
        cfg = self.config
        b = targets.shape[0]
        if q.shape[0] != b:
            raise AtelierInputError(f"{q.shape[0]} query rows for {b} target grids")
        mask = random_mask(b, cfg.num_positions, cfg.channels, generator).to(targets.device)
        drop = (torch.rand(b, generator=generator) < cond_drop).to(targets.device)
        logits = self.generator(torch.where(mask, cfg.mask_id, targets), self.condition(q, drop))
        return (masked_token_loss(logits, targets, mask, label_smoothing=label_smoothing),
                masked_token_accuracy(logits, targets, mask))


def _check_tokens(tokens: torch.Tensor, cfg: TransformerConfig, n: int) -> None:
    if tokens.dtype != torch.long or tokens.dim() != 3 or tuple(tokens.shape) != (n, cfg.num_positions, cfg.channels):
        raise AtelierInputError(f"tokens must be long [{n}, {cfg.num_positions}, {cfg.channels}] (one grid per "
                                f"image feature row), got {tokens.dtype} {list(tokens.shape)}")


def train_query_generator(qformer, qgen: QueryGenerator, image_feats: torch.Tensor, tokens: torch.Tensor,
                          ckpt_path: str | Path, *, steps: int, batch_size: int = 64, lr: float = 5e-4,
                          warmup: int = 20, finetune_generator: bool = True, cond_drop: float = 0.1,
                          label_smoothing: float = 0.1, weight_decay: float = 0.01, seed: int = 0,
                          ckpt_every: Optional[int] = None, progress: bool = True) -> list[dict]:
    """Phase 1, target image generation (Eq. 7): the frozen Q-Former's image queries ``q = Q(I)``
    drive the generator through the adapter to reconstruct ``I``'s tokens ``[N, positions, C]``
    (``tokens[i]`` belongs to ``image_feats[i]``). Trains the adapter, and the generator too
    when ``finetune_generator``; resumable like every trainer here."""
    _check_tokens(tokens, qgen.config, image_feats.shape[0])
    device = next(qgen.parameters()).device
    qformer.eval()
    q_flags = [p.requires_grad for p in qformer.parameters()]
    qformer.requires_grad_(False)
    qgen.generator.requires_grad_(finetune_generator)
    params = [p for p in qgen.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.96))

    def step_fn(step: int) -> dict:
        set_lr(opt, lr * lr_factor(step, steps, warmup))
        idx = torch.as_tensor(batch_indices(len(image_feats), batch_size, step, seed))
        gen = torch.Generator().manual_seed(step_seed(seed + 7919, step))
        with torch.no_grad():
            q = qformer.query_outputs(image_feats[idx].to(device).float())
        loss, acc = qgen.loss(q, tokens[idx].to(device), gen, cond_drop=cond_drop, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": loss.item(), "acc": float(acc)}

    arch = {**qgen.arch, "finetune_generator": bool(finetune_generator)}
    trainer = ResumableTrainer(qgen, opt, ckpt_path, arch, seed, steps, ckpt_every=ckpt_every or max(50, steps // 10),
                               desc="generator adapter (Eq. 7)")
    try:
        history = trainer.run(step_fn, progress=progress)
    finally:
        for p, flag in zip(qformer.parameters(), q_flags):
            p.requires_grad_(flag)
        qgen.generator.requires_grad_(True)
    qgen.eval()
    return history


def load_query_generator(ckpt_path: str | Path, device: str | torch.device = "cpu") -> QueryGenerator:
    """The :class:`QueryGenerator` of a :func:`train_query_generator` checkpoint, in eval mode."""
    tensors, meta = load_checkpoint(ckpt_path)
    arch = dict(meta.get("arch") or {})
    if arch.get("name") != ARCH_NAME:
        raise AtelierInputError(f"{ckpt_path}: not a query-generator checkpoint (arch name {arch.get('name')!r})")
    cfg = TransformerConfig.from_dict(arch["generator"])
    qgen = QueryGenerator(QueryAdapter(int(arch["query_dim"]), cfg.text_dim), MaskedTokenTransformer(cfg))
    load_model_state(qgen, tensors, ckpt_path, what="the query generator")
    return qgen.to(device).eval()
