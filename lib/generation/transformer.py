"""The masked-token transformer: one bidirectional model, configured (not copied) per paper.

- MaskGIT/Muse base model (Muse Sec. 2.3): image tokens, some replaced by [MASK], + learned 2-D
  position embeddings -> pre-norm transformer blocks with cross-attention to the projected text
  (``text_mode="cross_attention"``) -> per-token logits over the codebook.
- M6-Fashion (Sec. 3.2): one BERT-style sequence "starts with multi-modal condition tokens c and
  ends with the visual token sequence I of the target": visual-condition tokens (crops), a [SEP]
  between crops and [EOV] after them, then the text and [EOT], then the target
  (``text_mode="in_sequence"``, ``max_visual_tokens > 0``).
- MoVQ Sec. 3.2 multichannel tokens: each position holds C indices into one codebook; their
  embeddings are combined into one input token and C heads predict the C indices. The default
  ``channel_embedding="shared"`` looks every channel's index up in ONE table (MoVQ Sec. 3.2: the C
  chunks share one codebook, so code k means the same in every channel) and concatenates the C
  vectors before a linear map (MoVQ: "we inversely concatenate chunks along the channel as one
  token"); concatenation, not a sum, because a sum of one shared table cannot tell (a, b) from
  (b, a). ``"sum"`` / ``"concat"`` give each channel its own table (an ablation of the sharing).
  Every entry can be masked on its own (id K = [MASK]).
- Muse Sec. 2.4 super-resolution: ``low_res=(h, w, c, k)`` adds the low-resolution stage's tokens,
  embedded with their own tables and 2-D positions and *prepended* to the sequence (every layer
  attends jointly over low- and high-resolution tokens). Muse instead runs the low-res tokens
  through their own self-attention layers and lets the high-res tokens cross-attend to them
  concatenated with the text; that design keeps 4096-token sequences tractable with multi-axis
  attention, while at our grid sizes (<= 16x16) joint self-attention is cheap, needs no second
  stack, and gives the low-res tokens the same depth of interaction.

Sequence layout (prefix entries padded per row are excluded by an attention key-padding mask; the
transformer has no 1-D position embedding, so the order of the prefix slots carries no meaning --
"[SEP] between crop k-1 and k" is expressed by giving that [SEP] crop k's segment embedding):

    [low-res Nl] [visual Lv][SEP x (crops-1)][EOV] [text L][EOT] [target N]

Logits are returned for the N target positions only: ``[B, N, C, K]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lib.generation.conditioning import Condition
from lib.generation.layers import Block, TextConditioner, init_weights
from lib.io import AtelierInputError

TEXT_MODES = ("none", "cross_attention", "in_sequence")
CHANNEL_EMBEDDINGS = ("shared", "sum", "concat")


@dataclass
class TransformerConfig:
    """Hyper-parameters of :class:`MaskedTokenTransformer` (and :class:`ARTransformer`).

    ``grid_h x grid_w`` positions of ``channels`` indices each into a codebook of
    ``codebook_size`` (K) entries; ``max_visual_tokens`` 0 = no visual condition; ``low_res``
    ``(h, w, c, k)`` of the low-resolution tokens of a super-resolution stage, or None.
    """

    grid_h: int
    grid_w: int
    channels: int
    codebook_size: int
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    text_mode: str = "cross_attention"
    text_dim: int = 384
    max_text_len: int = 16
    max_visual_tokens: int = 0
    max_visual_crops: int = 2
    low_res: tuple[int, int, int, int] | None = None
    channel_embedding: str = "shared"

    def __post_init__(self) -> None:
        for name in ("grid_h", "grid_w", "channels", "codebook_size", "dim", "depth", "heads", "text_dim",
                     "max_text_len", "max_visual_crops"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AtelierInputError(f"TransformerConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.max_visual_tokens, int) or self.max_visual_tokens < 0:
            raise AtelierInputError(f"TransformerConfig.max_visual_tokens must be an int >= 0, "
                                    f"got {self.max_visual_tokens!r}")
        if self.dim % self.heads:
            raise AtelierInputError(f"TransformerConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.text_mode not in TEXT_MODES:
            raise AtelierInputError(f"TransformerConfig.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.channel_embedding not in CHANNEL_EMBEDDINGS:
            raise AtelierInputError(f"TransformerConfig.channel_embedding must be one of {CHANNEL_EMBEDDINGS}, "
                                    f"got {self.channel_embedding!r}")
        if not 0 <= self.dropout < 1 or self.mlp_ratio <= 0:
            raise AtelierInputError(f"TransformerConfig: dropout must be in [0, 1) and mlp_ratio > 0, "
                                    f"got {self.dropout}, {self.mlp_ratio}")
        if self.low_res is not None:
            low = tuple(self.low_res)
            if len(low) != 4 or not all(isinstance(v, int) and v >= 1 for v in low):
                raise AtelierInputError(f"TransformerConfig.low_res must be (h, w, c, k) positive ints, "
                                        f"got {self.low_res!r}")
            self.low_res = low

    @property
    def num_positions(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["low_res"] = list(self.low_res) if self.low_res is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"name"})
        if unknown:
            raise AtelierInputError(f"TransformerConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("low_res") is not None:
            kw["low_res"] = tuple(kw["low_res"])
        return cls(**kw)


class ChannelEmbedding(nn.Module):
    """``[..., C]`` token ids -> ``[..., dim]`` (MoVQ Sec. 3.2 multichannel tokens).

    ``mode="shared"``: one table of ``vocab`` rows for all channels (the shared codebook), the C
    vectors concatenated and mapped to ``dim`` (order-aware). ``"sum"`` / ``"concat"``: one table
    per channel, summed or concatenated + linear (the unshared ablation). With C = 1 every mode is
    a plain lookup.
    """

    def __init__(self, channels: int, vocab: int, dim: int, mode: str = "shared"):
        super().__init__()
        self.channels, self.vocab, self.mode = channels, vocab, mode
        shared = mode == "shared"
        self.table = nn.Embedding(vocab if shared else channels * vocab, dim)
        self.register_buffer("offsets", torch.zeros(channels, dtype=torch.long) if shared
                             else torch.arange(channels) * vocab, persistent=False)
        self.mix = nn.Linear(channels * dim, dim) if mode != "sum" and channels > 1 else None

    def per_channel(self, ids: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` ids -> ``[..., C, dim]``: each entry's embedding before channels are combined."""
        return self.table(ids + self.offsets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.per_channel(ids)
        if self.mix is None:
            return e.sum(-2)
        return self.mix(e.flatten(-2))


class GridPosition(nn.Module):
    """Learned 2-D position embedding: row embedding + column embedding (Muse Sec. 2.3)."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.height, self.width = height, width
        self.row = nn.Embedding(height, dim)
        self.col = nn.Embedding(width, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.row(positions // self.width) + self.col(positions % self.width)


def check_ids(name: str, ids: torch.Tensor, shape: tuple, high: int) -> None:
    if ids.dtype != torch.long or tuple(ids.shape) != shape:
        raise AtelierInputError(f"{name} must be long {list(shape)}, got {ids.dtype} {list(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= high):
        raise AtelierInputError(f"{name} must lie in [0, {high}), got [{int(ids.min())}, {int(ids.max())}]")


class MaskedTokenTransformer(nn.Module):
    """Bidirectional transformer over a (partially masked) token grid: ``model(tokens, cond)``.

    ``tokens`` long ``[B, N, C]`` with ids in [0, K] (K = [MASK]); ``cond`` a :class:`Condition`
    or None. Returns logits ``[B, N, C, K]`` for every target entry (callers use the masked ones).
    """

    arch_name = "masked_token_transformer"

    def __init__(self, config: TransformerConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            config = TransformerConfig.from_dict(config)
        self.config = c = config
        self.embed = ChannelEmbedding(c.channels, c.codebook_size + 1, c.dim, c.channel_embedding)
        self.pos = GridPosition(c.grid_h, c.grid_w, c.dim)
        if c.text_mode != "none":
            self.text = TextConditioner(c.text_dim, c.dim, c.max_text_len, positions=c.text_mode == "in_sequence")
        if c.text_mode == "in_sequence":
            self.eot = nn.Parameter(torch.randn(c.dim) * 0.02)
        if c.max_visual_tokens > 0:
            self.segment = nn.Embedding(c.max_visual_crops, c.dim)
            self.sep = nn.Parameter(torch.randn(c.dim) * 0.02)
            self.eov = nn.Parameter(torch.randn(c.dim) * 0.02)
        if c.low_res is not None:
            lh, lw, lc, lk = c.low_res
            self.low_embed = ChannelEmbedding(lc, lk, c.dim, c.channel_embedding)
            self.low_pos = GridPosition(lh, lw, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.dropout,
                                          cross_attention=c.text_mode == "cross_attention") for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.channels * c.codebook_size)  # the C heads, one matmul
        self.apply(init_weights)

    @property
    def arch(self) -> dict[str, Any]:
        return {"name": self.arch_name, **self.config.to_dict()}

    @property
    def mask_id(self) -> int:
        return self.config.codebook_size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- condition prefixes -----------------------------------------------------------------------
    def _visual_prefix(self, cond: Condition, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        vis = cond.visual_tokens
        lv = vis.shape[1] if vis.dim() == 3 else -1
        if lv > c.max_visual_tokens:
            raise AtelierInputError(f"cond.visual_tokens: {lv} tokens, the model takes at most {c.max_visual_tokens}")
        check_ids("cond.visual_tokens", vis, (batch, lv, c.channels), c.codebook_size)
        check_ids("cond.visual_positions", cond.visual_positions, (batch, lv), c.num_positions)
        device = vis.device
        valid = cond.visual_valid
        if valid is None:
            valid = torch.ones(batch, lv, dtype=torch.bool, device=device)
        segment = cond.visual_segment if cond.visual_segment is not None else torch.zeros_like(vis[..., 0])
        if valid.shape != (batch, lv) or valid.dtype != torch.bool:
            raise AtelierInputError(f"cond.visual_valid must be [B, Lv]={batch, lv} bool, "
                                    f"got {tuple(valid.shape)} {valid.dtype}")
        check_ids("cond.visual_segment", segment, (batch, lv), c.max_visual_crops)
        x = self.embed(vis) + self.pos(cond.visual_positions) + self.segment(segment)
        # [SEP] k sits between crop k-1 and crop k: present iff crop k is; [EOV] iff any crop is.
        ks = torch.arange(1, c.max_visual_crops, device=device)
        sep_valid = ((segment[:, :, None] == ks) & valid[:, :, None]).any(1)  # [B, crops-1]
        sep = (self.sep + self.segment(ks)).expand(batch, -1, -1)
        eov = self.eov.expand(batch, 1, -1)
        x = torch.cat([x, sep, eov], 1)
        mask = torch.cat([valid, sep_valid, valid.any(1, keepdim=True)], 1)
        return x, mask

    def _low_res_prefix(self, cond: Condition | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        lh, lw, lc, lk = self.config.low_res
        low = cond.low_res_tokens if cond is not None else None
        if low is None:
            raise AtelierInputError("cond.low_res_tokens are required: this is a super-resolution model "
                                    f"(low_res={self.config.low_res})")
        check_ids("cond.low_res_tokens", low, (batch, lh * lw, lc), lk)
        x = self.low_embed(low) + self.low_pos(torch.arange(lh * lw, device=low.device))
        return x, torch.ones(batch, lh * lw, dtype=torch.bool, device=low.device)

    def _check_condition(self, cond: Condition | None, batch: int) -> None:
        c = self.config
        if cond is None:
            return
        if cond.batch_size is not None and cond.batch_size != batch:
            raise AtelierInputError(f"cond has batch size {cond.batch_size}, tokens have {batch}")
        if c.text_mode == "none" and cond.text_tokens is not None:
            raise AtelierInputError("cond.text_tokens given to a model with text_mode='none'")
        if c.max_visual_tokens == 0 and cond.visual_tokens is not None:
            raise AtelierInputError("cond.visual_tokens given to a model with max_visual_tokens=0")
        if c.low_res is None and cond.low_res_tokens is not None:
            raise AtelierInputError("cond.low_res_tokens given to a model without low_res")

    # -- forward ----------------------------------------------------------------------------------
    # Where the low-res tokens of a super-resolution model go (Muse Sec. 2.4): here in the
    # self-attention sequence; lib.generation.super_res's Fig. 4 form moves them into the memory.
    low_res_in_sequence = True

    def extra_memory(self, cond: Condition | None, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cross-attention memory appended after the text, ``([B, M, dim], [B, M] bool)``; none here."""
        return None

    def encode_condition(self, cond: Condition | None, batch: int) -> "ConditionCache":
        """Everything of one forward that depends on ``cond`` only: the embedded prefix with its key
        mask, and every block's cross-attention keys/values of the projected text.

        Iterative decoding calls the model 8-24 times with the same condition; passing the result
        as ``forward(..., cache=)`` skips re-embedding it every step, as production Muse samplers
        cache the text keys/values (Muse Sec. 2.3 cross-attention; issue 15). Same numbers as
        recomputing them (the same modules on the same inputs).
        """
        c = self.config
        self._check_condition(cond, batch)
        device = self.pos.row.weight.device
        parts, masks = [], []
        if c.low_res is not None and self.low_res_in_sequence:
            p, m = self._low_res_prefix(cond, batch)
            parts.append(p), masks.append(m)
        if c.max_visual_tokens > 0 and cond is not None and cond.visual_tokens is not None:
            p, m = self._visual_prefix(cond, batch)
            parts.append(p), masks.append(m)
        memory_kv = memory_mask = None
        if c.text_mode == "cross_attention":
            memory, memory_mask = self.text(cond, batch)
            extra = self.extra_memory(cond, batch)
            if extra is not None:
                memory = torch.cat([memory.expand(batch, -1, -1), extra[0]], 1)
                memory_mask = torch.cat([memory_mask.expand(batch, -1), extra[1]], 1)
            memory_kv = [block.cross.keys_values(memory) for block in self.blocks]
        elif c.text_mode == "in_sequence":
            p, m = self.text(cond, batch)
            parts += [p, self.eot.expand(batch, 1, -1)]
            masks += [m, torch.ones(batch, 1, dtype=torch.bool, device=device)]
        prefix = key_mask = None
        if parts:
            prefix = torch.cat(parts, 1)
            key_mask = torch.cat(masks + [torch.ones(batch, c.num_positions, dtype=torch.bool, device=device)], 1)
            if bool(key_mask.all()):
                key_mask = None  # nothing padded: let attention take its unmasked fast path
        return ConditionCache(batch=batch, prefix=prefix, key_mask=key_mask, memory_kv=memory_kv,
                              memory_mask=memory_mask)

    def forward(self, tokens: torch.Tensor, cond: Condition | None = None, *,
                cache: "ConditionCache | None" = None) -> torch.Tensor:
        """Logits ``[B, N, C, K]``; ``cache`` (from :meth:`encode_condition` of the same ``cond``)
        replaces ``cond``'s embedding."""
        c = self.config
        batch = tokens.shape[0] if tokens.dim() == 3 else -1
        check_ids("tokens", tokens, (batch, c.num_positions, c.channels), c.codebook_size + 1)
        if cache is None:
            cache = self.encode_condition(cond, batch)
        elif not isinstance(cache, ConditionCache) or cache.batch != batch:
            raise AtelierInputError(f"cache must be the ConditionCache of a batch of {batch} "
                                    f"(model.encode_condition(cond, {batch})), got "
                                    f"{getattr(cache, 'batch', type(cache).__name__)}")
        x = self.embed(tokens) + self.pos(torch.arange(c.num_positions, device=tokens.device))
        if cache.prefix is not None:
            x = torch.cat([cache.prefix, x], 1)
        x = self.drop(x)
        kvs = cache.memory_kv if cache.memory_kv is not None else [None] * len(self.blocks)
        for block, kv in zip(self.blocks, kvs):
            x = block(x, key_mask=cache.key_mask, memory_mask=cache.memory_mask, memory_kv=kv)
        x = self.norm(x[:, -c.num_positions:])
        return self.head(x).view(batch, c.num_positions, c.channels, c.codebook_size)


@dataclass
class ConditionCache:
    """What :meth:`MaskedTokenTransformer.encode_condition` computed for one condition and batch:
    ``prefix [B, P, dim]`` (None without one), its ``key_mask [B, P + N]`` (None = nothing padded),
    per-block cross-attention ``memory_kv`` (None without cross-attention) and ``memory_mask``."""

    batch: int
    prefix: torch.Tensor | None
    key_mask: torch.Tensor | None
    memory_kv: list | None
    memory_mask: torch.Tensor | None


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the masked entries only (M6-Fashion Eq. 5, L_NAR = E_{i in M}[-log p(I_i |
    I_U, c)]; Muse Sec. 2.3), averaged over every masked entry of the batch.

    ``logits`` ``[B, N, C, K]``, ``targets`` long ``[B, N, C]``, ``mask`` bool ``[B, N, C]``.
    """
    if logits.shape[:-1] != targets.shape or mask.shape != targets.shape or mask.dtype != torch.bool:
        raise AtelierInputError(f"masked_token_loss: logits [B,N,C,K], targets and mask [B,N,C] (mask bool) "
                                f"expected, got "
                                f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)} {mask.dtype}")
    if not bool(mask.any()):
        raise AtelierInputError("masked_token_loss: the mask selects no entry")
    return F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing)


@torch.no_grad()
def masked_token_accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of masked entries whose arg-max prediction is the target (a 0-d tensor)."""
    if not bool(mask.any()):
        raise AtelierInputError("masked_token_accuracy: the mask selects no entry")
    return (logits.argmax(-1)[mask] == targets[mask]).float().mean()
