"""Autoregressive baseline (Taming Transformers / Parti-like): a causal decoder over token entries.

MoVQ Sec. 3.2 trains both an "auto" (autoregressive, as the VQGAN baseline) and a "mask" (MaskGIT)
second stage on the same tokens; Muse Sec. 1 compares its parallel decoding against Parti's
sequential one. This module is the "auto" side, built from the same blocks, width and depth
options and text cross-attention as :class:`~lib.generation.transformer.MaskedTokenTransformer`.

The grid ``[B, N, C]`` is flattened to ``T = N*C`` entries in raster order, position-major and
channel-minor (entry ``j`` = position ``j // C``, channel ``j % C``), as RQ-Transformer and the
Taming baseline of multichannel codes do. Input ``j`` is a learned [BOS] for j = 0, else the entry
``j-1``'s embedding (per-channel tables), plus a learned 1-D position embedding (Taming); output
``j`` predicts entry ``j`` with the head of its channel.

Incremental decoding (:meth:`ARTransformer.start` / :meth:`~ARTransformer.next_logits` /
:meth:`~ARTransformer.append`) keeps per-layer keys/values (a KV cache); ``use_cache=False``
recomputes the whole prefix at every step instead, as Taming's sampler did. The sampling loop
itself lives in ``lib.sampling``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from lib.generation.conditioning import Condition
from lib.generation.layers import Block, TextConditioner, init_weights
from lib.generation.transformer import TransformerConfig, check_ids
from lib.io import AtelierInputError


@dataclass
class DecodeState:
    """Incremental decoding state of :class:`ARTransformer` for one batch.

    ``tokens`` ``[B, t]`` holds the entries chosen so far (flattened order); ``past`` the per-layer
    ``(k, v)`` of inputs ``0..t`` once :meth:`ARTransformer.next_logits` has run (cache mode).
    """

    batch: int
    use_cache: bool
    tokens: torch.Tensor
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    memory_kv: list | None = None
    past: list | None = None
    logits: torch.Tensor | None = None  # logits of entry t, once computed
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


class ARTransformer(nn.Module):
    """Causal transformer over flattened token entries: ``model(tokens, cond) -> [B, N, C, K]``
    with teacher forcing (logit ``[b, n, c]`` sees only the entries before ``(n, c)``)."""

    arch_name = "ar_transformer"

    def __init__(self, config: TransformerConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            config = TransformerConfig.from_dict(config)
        c = config
        if c.text_mode not in ("none", "cross_attention"):
            raise AtelierInputError(f"ARTransformer: text_mode must be 'none' or 'cross_attention', "
                                    f"got {c.text_mode!r}")
        if c.max_visual_tokens or c.low_res is not None:
            raise AtelierInputError("ARTransformer: visual conditions and low_res are not supported (set "
                                    "max_visual_tokens=0 and low_res=None)")
        self.config = c
        self.length = c.num_positions * c.channels
        self.embed = nn.Embedding(c.channels * c.codebook_size, c.dim)
        self.register_buffer("offsets", torch.arange(c.channels) * c.codebook_size, persistent=False)
        self.bos = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.pos = nn.Embedding(self.length, c.dim)
        if c.text_mode == "cross_attention":
            self.text = TextConditioner(c.text_dim, c.dim, c.max_text_len)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.dropout,
                                          cross_attention=c.text_mode == "cross_attention") for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head_weight = nn.Parameter(torch.randn(c.channels, c.codebook_size, c.dim) * 0.02)
        self.head_bias = nn.Parameter(torch.zeros(c.channels, c.codebook_size))
        self.apply(init_weights)

    @property
    def arch(self) -> dict[str, Any]:
        return {"name": self.arch_name, **self.config.to_dict()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- pieces ---------------------------------------------------------------------------------
    def _inputs(self, flat: torch.Tensor) -> torch.Tensor:
        """Input embeddings of slots ``0..t`` given the chosen entries ``flat`` ``[B, t]``."""
        b, t = flat.shape
        channel = torch.arange(t, device=flat.device) % self.config.channels
        prev = self.embed(flat + self.offsets[channel])
        x = torch.cat([self.bos.expand(b, 1, -1), prev], 1)
        return x + self.pos(torch.arange(t + 1, device=flat.device))

    def _slot_input(self, flat: torch.Tensor, t: int) -> torch.Tensor:
        """Input embedding ``[B, 1, dim]`` of slot ``t`` alone (what :meth:`_inputs` gives there)."""
        if t == 0:
            x = self.bos.expand(flat.shape[0], 1, -1)
        else:
            x = self.embed(flat[:, t - 1:t] + self.offsets[(t - 1) % self.config.channels])
        return x + self.pos(torch.tensor([t], device=flat.device))

    def _memory(self, cond: Condition | None, batch: int):
        if cond is not None and cond.batch_size is not None and cond.batch_size != batch:
            raise AtelierInputError(f"cond has batch size {cond.batch_size}, tokens have {batch}")
        if self.config.text_mode == "none":
            if cond is not None and cond.text_tokens is not None:
                raise AtelierInputError("cond.text_tokens given to a model with text_mode='none'")
            return None, None
        return self.text(cond, batch)

    def _head(self, h: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., K]`` of hidden states ``h`` ``[..., dim]`` with per-entry channel heads."""
        return torch.einsum("...d,...kd->...k", h, self.head_weight[channel]) + self.head_bias[channel]

    # -- teacher forcing ------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        c = self.config
        batch = tokens.shape[0] if tokens.dim() == 3 else -1
        check_ids("tokens", tokens, (batch, c.num_positions, c.channels), c.codebook_size)
        memory, memory_mask = self._memory(cond, batch)
        x = self.drop(self._inputs(tokens.reshape(batch, -1)[:, :-1]))
        for block in self.blocks:
            x = block(x, memory=memory, memory_mask=memory_mask, causal=True)
        h = self.norm(x).view(batch, c.num_positions, c.channels, c.dim)
        return torch.einsum("bncd,ckd->bnck", h, self.head_weight) + self.head_bias

    # -- incremental decoding -------------------------------------------------------------------
    @torch.no_grad()
    def start(self, cond: Condition | None, batch: int, use_cache: bool = True) -> DecodeState:
        """A fresh decoding state for ``batch`` sequences (text memory projected once)."""
        device = self.bos.device
        memory, memory_mask = self._memory(cond, batch)
        memory_kv = None
        if memory is not None and use_cache:
            memory_kv = [blk.cross.keys_values(memory) for blk in self.blocks]
        empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
        return DecodeState(batch=batch, use_cache=use_cache, tokens=empty,
                           memory=memory, memory_mask=memory_mask, memory_kv=memory_kv, device=device)

    @torch.no_grad()
    def next_logits(self, state: DecodeState) -> torch.Tensor:
        """Logits ``[B, K]`` of the next entry (index ``state.length``) given the entries so far."""
        t = state.length
        if t >= self.length:
            raise AtelierInputError(f"next_logits: all {self.length} entries are already decoded")
        if state.logits is not None:
            return state.logits
        channel = torch.tensor(t % self.config.channels, device=state.device)
        if state.use_cache:
            # Only input slot t is new: BOS at t = 0, else the embedding of entry t-1.
            x = self._slot_input(state.tokens, t)  # only input slot t is new
            past = state.past or [None] * len(self.blocks)
            new_past = []
            for i, block in enumerate(self.blocks):
                mem_kv = state.memory_kv[i] if state.memory_kv is not None else None
                x, kv = block.step(x, past[i], memory_kv=mem_kv, memory_mask=state.memory_mask)
                new_past.append(kv)
            state.past = new_past
        else:
            x = self._inputs(state.tokens)
            for block in self.blocks:
                x = block(x, memory=state.memory, memory_mask=state.memory_mask, causal=True)
        state.logits = self._head(self.norm(x[:, -1]), channel)
        return state.logits

    @torch.no_grad()
    def append(self, state: DecodeState, token: torch.Tensor) -> DecodeState:
        """Record the chosen entry ``token`` ``[B]`` (long, in [0, K)) and move to the next one."""
        if state.logits is None and state.use_cache:
            self.next_logits(state)  # the cache must hold input slot t before slot t+1 arrives
        token = torch.as_tensor(token, device=state.device)
        check_ids("token", token, (state.batch,), self.config.codebook_size)
        state.tokens = torch.cat([state.tokens, token[:, None]], 1)
        state.logits = None
        return state

    def grid(self, state: DecodeState) -> torch.Tensor:
        """The decoded entries as a ``[B, N, C]`` grid (once all ``N*C`` are chosen)."""
        if state.length != self.length:
            raise AtelierInputError(f"grid: {state.length} of {self.length} entries decoded")
        return state.tokens.view(state.batch, self.config.num_positions, self.config.channels)
