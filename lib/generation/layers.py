"""Transformer pieces shared by the masked (bidirectional) and the autoregressive generator.

Pre-norm blocks (Vaswani et al. 2017 with the norm moved before each sub-layer, as in GPT-2 and
Muse's base model) of self-attention, optional cross-attention to text (Muse Sec. 2.3: "self-
attention block, cross-attention block and MLP block") and an MLP; and the text conditioner that
projects frozen text features to the model width and swaps in a learned null text for rows whose
condition is dropped (Muse Sec. 2.7 classifier-free guidance).

Attention masks are boolean with True = "may attend" (``F.scaled_dot_product_attention``'s
convention), given per key: ``key_mask [B, S]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.io import AtelierInputError


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise AtelierInputError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k, v)`` each ``[B, heads, S, dim/heads]`` of the sequence ``x`` (for caching)."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                causal: bool = False, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask`` ``[B, S]`` (True = attend to that key) or a full ``attn_mask`` broadcastable to
        ``[B, heads, N, S]`` (the Q-Former's unimodal / bidirectional / causal masks), not both."""
        if key_mask is not None and attn_mask is not None:
            raise AtelierInputError("Attention: pass key_mask or attn_mask, not both")
        q = self._split(self.q(x))
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        mask = key_mask[:, None, None, :] if key_mask is not None else attn_mask
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, s, hd = o.shape
        return self.out(o.transpose(1, 2).reshape(b, s, h * hd))


class Block(nn.Module):
    """``x + SelfAttn(LN x)``, then ``x + CrossAttn(LN x, memory)`` if ``cross_attention``, then
    ``x + MLP(LN x)`` (GELU, ``mlp_ratio`` x wider)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 cross_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, causal: bool = False,
                memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_mask=key_mask, causal=causal))
        return self._rest(x, memory, memory_mask, memory_kv)

    def _rest(self, x, memory, memory_mask, memory_kv):
        if self.cross_attention:
            x = x + self.drop(self.cross(self.norm_cross(x), context=memory, key_mask=memory_mask, kv=memory_kv))
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
             memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None, memory_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Incremental causal decoding: ``x`` ``[B, 1, dim]`` is the newest position; it attends to
        the cached keys/values ``past`` and itself. Returns the output and the extended cache."""
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.drop(self.attn(h, kv=(k, v)))
        return self._rest(x, None, memory_mask, memory_kv), (k, v)


class TextConditioner(nn.Module):
    """Frozen text features ``[B, L, text_dim]`` -> ``(memory [B, L', dim], mask [B, L'] bool)``.

    A linear projection to the model width (Muse Sec. 2.1: "linearly projected to the hidden size"),
    plus, when ``positions``, a learned 1-D position embedding (M6 puts the text in the token
    sequence, where nothing else would tell its order). Rows with ``cond.drop`` True -- and every
    row when the condition carries no text -- get the learned null text instead: one learned
    vector, a mask of length 1. Their output therefore does not depend on the text at all.
    """

    def __init__(self, text_dim: int, dim: int, max_len: int, positions: bool = False):
        super().__init__()
        self.text_dim, self.max_len = text_dim, max_len
        self.proj = nn.Linear(text_dim, dim)
        self.null = nn.Parameter(torch.randn(dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02) if positions else None

    def forward(self, cond, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self.null.device, self.null.dtype
        text = cond.text_tokens if cond is not None else None
        if text is None:
            return self.null.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=device)
        if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != self.text_dim or text.shape[1] > self.max_len:
            raise AtelierInputError(f"cond.text_tokens must be [B={batch}, L<={self.max_len}, {self.text_dim}], "
                                    f"got {tuple(text.shape)}")
        length = text.shape[1]
        mask = cond.text_mask
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        elif mask.shape != (batch, length) or mask.dtype != torch.bool:
            raise AtelierInputError(f"cond.text_mask must be [B, L]={batch, length} bool, "
                                    f"got {tuple(mask.shape)} {mask.dtype}")
        drop = cond.drop if cond.drop is not None else torch.zeros(batch, dtype=torch.bool, device=device)
        if drop.shape != (batch,) or drop.dtype != torch.bool:
            raise AtelierInputError(f"cond.drop must be [B]={batch} bool, got {tuple(drop.shape)} {drop.dtype}")
        drop, mask = drop.to(device), mask.to(device)
        if bool((~drop & ~mask.any(1)).any()):
            raise AtelierInputError("cond.text_mask: a row that is not dropped has no real text token "
                                    "(set cond.drop for rows without text)")
        memory = self.proj(text.to(device=device, dtype=dtype))
        if self.pos is not None:
            memory = memory + self.pos[:length]
        null_seq = torch.zeros(length, memory.shape[-1], device=device, dtype=dtype)
        null_seq = torch.cat([self.null[None], null_seq[1:]])
        null_mask = torch.arange(length, device=device) == 0
        memory = torch.where(drop[:, None, None], null_seq, memory)
        mask = torch.where(drop[:, None], null_mask, mask)
        return memory, mask


def init_weights(module: nn.Module) -> None:
    """BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
