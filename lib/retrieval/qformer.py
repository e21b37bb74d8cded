"""The Q-Former: UniFashion's multimodal encoder (Sec. 3.1.1, 3.2.1), after BLIP-2 (Li et al., 2023).

A set of ``num_queries`` learnable query vectors and the caption's text tokens pass through
``num_layers`` transformer layers that share one self-attention over ``[queries ; text]``. In the
query positions only, a cross-attention reads the frozen image features (every layer, or every
``cross_every``-th one: BLIP-2 uses 2). Queries and text keep separate feed-forward networks, as in
BLIP-2, whose query stream has its own ``intermediate_query`` FFN.

Who may see whom is the self-attention mask:

- ``"unimodal"`` (UniFashion Eq. 2, ITC): queries and text cannot see each other; the query outputs
  ``Z_I`` depend on the image alone and the text outputs ``Z_C`` (with the [CLS] output ``e_cls``)
  on the caption alone -- "to avoid information leaks".
- ``"bidirectional"`` (ITM; the composed query of Eq. 9, reference image + modification text):
  every query and every text token attends to all of them, so the text [CLS] output carries
  image information and the query outputs carry text information.

Stand-ins (what differs from the paper and why): BLIP-2 initialises the Q-Former from BERT-base
(d = 768) and embeds word pieces itself. No BERT checkpoint other than MiniLM ships offline, so the
text stream starts from the *frozen* all-MiniLM-L6-v2 token features (:mod:`lib.text.encoder`,
``[B, L, 384]``, first token = MiniLM's [CLS] output) mapped by a learned ``Linear(384 -> d)``; the
transformer layers are trained from scratch, pre-LayerNorm (more stable without a pretrained
initialisation than BERT's post-LN). The frozen image encoder is EfficientNet-Lite0 feature maps
(or a tokenizer's encoder) instead of EVA-ViT-g (see :mod:`lib.retrieval.features`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lib.generation.layers import Attention  # the one attention module (issue 16)
from lib.io import AtelierInputError, load_checkpoint
from lib.training import arch_of

MASK_MODES = ("unimodal", "bidirectional")
TEXT_DIM = 384  # MiniLM token features


def self_attention_mask(num_queries: int, text_mask: Optional[torch.Tensor], mode: str, batch: int,
                        device: torch.device) -> torch.Tensor:
    """``[B, 1, N, N]`` bool, True where position ``row`` may attend to ``col``; N = queries + text.

    Padded text positions are never attended to. ``"unimodal"`` additionally blocks the
    query<->text blocks (UniFashion Sec. 3.1.1); ``"bidirectional"`` leaves them open (Sec. 3.2.1).
    """
    if mode not in MASK_MODES:
        raise AtelierInputError(f"mask must be one of {MASK_MODES}, got {mode!r}")
    q_valid = torch.ones(batch, num_queries, dtype=torch.bool, device=device)
    key_valid = q_valid if text_mask is None else torch.cat([q_valid, text_mask.to(device=device, dtype=torch.bool)], 1)
    n = key_valid.shape[1]
    allowed = key_valid[:, None, :].expand(batch, n, n)
    if mode == "unimodal":
        is_query = torch.arange(n, device=device) < num_queries
        allowed = allowed & (is_query[:, None] == is_query[None, :])
    return allowed[:, None]


def _ffn(dim: int, mult: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mult * dim, dim))


class QFormerLayer(nn.Module):
    """Shared self-attention over [queries ; text], cross-attention in query positions only,
    separate FFNs for the query and the text stream (BLIP-2's Q-Former layer, pre-LN)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, cross_attention: bool, dropout: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.has_cross = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads, dropout)
        self.ffn_query = _ffn(dim, ffn_mult, dropout)
        self.ffn_text = _ffn(dim, ffn_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, queries: Optional[torch.Tensor], text: Optional[torch.Tensor], image: Optional[torch.Tensor],
                mask: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        parts = [p for p in (queries, text) if p is not None]
        x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        x = x + self.drop(self.self_attn(self.norm_self(x), attn_mask=mask))
        nq = 0 if queries is None else queries.shape[1]
        queries, text = (x[:, :nq] if nq else None), (x[:, nq:] if text is not None else None)
        if queries is not None:
            if self.has_cross:
                queries = queries + self.drop(self.cross_attn(self.norm_cross(queries), context=image))
            queries = queries + self.drop(self.ffn_query(queries))
        if text is not None:
            text = text + self.drop(self.ffn_text(text))
        return queries, text


class QFormer(nn.Module):
    """UniFashion's multimodal encoder (see module docstring).

    Args:
        image_dim: channels ``C_f`` of the frozen image features ``[B, S, C_f]``.
        num_image_tokens: ``S``; a learned position embedding is added to the image tokens (the
            flattened feature map has lost its 2-D layout otherwise). ``None``: no position embedding
            (any ``S`` accepted).
        num_queries: learnable queries (32 in UniFashion / BLIP-2).
        dim: hidden width ``d`` (768 in BLIP-2); ``embed_dim``: width ``e`` of the ITC embeddings
            (256 in BLIP-2).
        cross_every: cross-attention in layers ``0, k, 2k, ...`` (1 = every layer, 2 = BLIP-2).
        text_dim: width of the frozen text token features (MiniLM: 384).
        dropout: BLIP-2 uses 0.1; the default 0 is for CPU budgets, where dropout's random masks
            cost ~20% of a training step (measured).
    """

    def __init__(self, image_dim: int, num_image_tokens: Optional[int] = None, num_queries: int = 32,
                 dim: int = 128, num_layers: int = 4, heads: int = 4, embed_dim: int = 128, cross_every: int = 2,
                 ffn_mult: int = 4, dropout: float = 0.0, text_dim: int = TEXT_DIM):
        super().__init__()
        for name, value in (("image_dim", image_dim), ("num_queries", num_queries), ("dim", dim),
                            ("num_layers", num_layers), ("heads", heads), ("embed_dim", embed_dim),
                            ("cross_every", cross_every), ("ffn_mult", ffn_mult), ("text_dim", text_dim)):
            if int(value) < 1:
                raise AtelierInputError(f"QFormer: {name} must be >= 1, got {value}")
        self.hparams = dict(image_dim=image_dim, num_image_tokens=num_image_tokens, num_queries=num_queries, dim=dim,
                            num_layers=num_layers, heads=heads, embed_dim=embed_dim, cross_every=cross_every,
                            ffn_mult=ffn_mult, dropout=dropout, text_dim=text_dim)
        self.num_queries, self.dim, self.image_dim, self.text_dim = num_queries, dim, image_dim, text_dim
        self.num_image_tokens = num_image_tokens
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)  # BLIP-2: N(0, 0.02)
        self.image_in = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.image_pos = nn.Parameter(torch.zeros(1, num_image_tokens, dim)) if num_image_tokens else None
        # Stand-in for BLIP-2's BERT word embeddings: a learned map of frozen MiniLM token features.
        self.text_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.layers = nn.ModuleList(
            [QFormerLayer(dim, heads, ffn_mult, i % cross_every == 0, dropout) for i in range(num_layers)])
        self.norm_query, self.norm_text = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.itm_head = nn.Linear(dim, 2)
        # Learnable ITC temperature (Eq. 3's lambda = 1 / temp), BLIP-2's init 0.07.
        self.temp = nn.Parameter(torch.tensor(0.07))

    @property
    def arch(self) -> dict:
        return arch_of("qformer", **self.hparams)

    def logit_scale(self) -> torch.Tensor:
        """``lambda`` of Eq. 3: 1 / temperature, the temperature kept in BLIP-2's [0.001, 0.5]."""
        return 1.0 / self.temp.clamp(0.001, 0.5)

    # -- input checks ---------------------------------------------------------------------------
    def _image(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.image_dim:
            raise AtelierInputError(f"image features must be [B, S, {self.image_dim}], got {tuple(feats.shape)}")
        if self.image_pos is not None and feats.shape[1] != self.image_pos.shape[1]:
            raise AtelierInputError(f"image features have {feats.shape[1]} tokens, the QFormer was built for "
                                    f"num_image_tokens={self.image_pos.shape[1]}")
        dtype = self.query_tokens.dtype
        x = self.image_in(feats.to(dtype))
        return x + self.image_pos if self.image_pos is not None else x

    def _text(self, tokens: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 3 or tokens.shape[-1] != self.text_dim:
            raise AtelierInputError(f"text tokens must be [B, L, {self.text_dim}], got {tuple(tokens.shape)}")
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if mask.shape != tokens.shape[:2]:
            raise AtelierInputError(f"text_mask must be [B, L] = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        if not bool(mask[:, 0].all()):
            raise AtelierInputError("text_mask[:, 0] must be True: the first token is the [CLS] token of every text")
        return self.text_in(tokens.to(self.query_tokens.dtype)), mask

    # -- the encoder ----------------------------------------------------------------------------
    def forward(self, image_feats: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None, mask: str = "unimodal"):
        """``(query_outputs [B, Q, d] | None, text_outputs [B, L, d] | None)``.

        Without ``text_tokens`` only the queries run (image pass); without ``image_feats`` only the
        text runs (no queries, no cross-attention). With both, ``mask`` picks the attention pattern.
        """
        if image_feats is None and text_tokens is None:
            raise AtelierInputError("QFormer needs image_feats, text_tokens or both")
        if mask not in MASK_MODES:
            raise AtelierInputError(f"mask must be one of {MASK_MODES}, got {mask!r}")
        image = self._image(image_feats) if image_feats is not None else None
        text, tmask = self._text(text_tokens, text_mask) if text_tokens is not None else (None, None)
        if image is not None and text is not None and image.shape[0] != text.shape[0]:
            raise AtelierInputError(f"batch sizes differ: {image.shape[0]} images, {text.shape[0]} texts")
        batch = (image if image is not None else text).shape[0]
        queries = self.query_tokens.expand(batch, -1, -1) if image is not None else None
        if queries is not None and text is not None:
            attn = self_attention_mask(self.num_queries, tmask, mask, batch, text.device)
        elif text is not None:
            attn = tmask[:, None, None, :].expand(batch, 1, text.shape[1], text.shape[1])
        else:
            attn = None
        for layer in self.layers:
            queries, text = layer(queries, text, image, attn)
        return (self.norm_query(queries) if queries is not None else None,
                self.norm_text(text) if text is not None else None)

    # -- the embeddings UniFashion uses ---------------------------------------------------------
    def query_outputs(self, image_feats: torch.Tensor) -> torch.Tensor:
        """``Z_I`` of Eq. 2: query outputs ``[B, Q, d]`` of the image alone (what the caption
        decoder's adapter reads)."""
        return self(image_feats=image_feats)[0]

    def image_embeds(self, image_feats: torch.Tensor) -> torch.Tensor:
        """``[B, Q, e]``: every query output projected and L2-normalised (ITC's image side)."""
        return F.normalize(self.vision_proj(self.query_outputs(image_feats)), dim=-1)

    def text_embed(self, text_tokens: torch.Tensor, text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``e_cls`` of Eq. 2: the text-only [CLS] output projected and L2-normalised, ``[B, e]``."""
        return self.cls_embed(self(text_tokens=text_tokens, text_mask=text_mask)[1])

    def cls_embed(self, text_outputs: torch.Tensor) -> torch.Tensor:
        """``[B, e]``: the [CLS] (first) text output projected by ``text_proj`` and L2-normalised."""
        return F.normalize(self.text_proj(text_outputs[:, 0]), dim=-1)

    def multimodal(self, image_feats: torch.Tensor, text_tokens: torch.Tensor,
                   text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Query outputs ``[B, Q, d]`` with the bidirectional mask (image and text fused)."""
        return self(image_feats, text_tokens, text_mask, mask="bidirectional")[0]

    def itm_logits(self, image_feats: torch.Tensor, text_tokens: torch.Tensor,
                   text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 2]`` (no match, match) logits of the ITM head on the mean multimodal query output."""
        return self.itm_head(self.multimodal(image_feats, text_tokens, text_mask).mean(1))

    def composed_outputs(self, ref_feats: torch.Tensor, text_tokens: torch.Tensor,
                         text_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``Z_R`` of Eq. 9: (query outputs ``q_R`` [B, Q, d], text outputs [B, L, d]) of the reference
        image and modification text under the bidirectional mask."""
        return self(ref_feats, text_tokens, text_mask, mask="bidirectional")

    def composed_embed(self, ref_feats: torch.Tensor, text_tokens: torch.Tensor,
                       text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The composed query ``e_cls`` of Eq. 10: the [CLS] output of ``Z_R`` projected by the text
        projection and L2-normalised, ``[B, e]`` (as in SPRC/BLIP-2 CIR code, which UniFashion follows)."""
        return self.cls_embed(self.composed_outputs(ref_feats, text_tokens, text_mask)[1])


def load_qformer(ckpt_path, device: str = "cpu") -> QFormer:
    """A :class:`QFormer` rebuilt from the ``arch`` of a checkpoint written by :mod:`lib.retrieval.train`
    (any phase), with its weights, in eval mode."""
    tensors, meta = load_checkpoint(ckpt_path, device=device)
    arch = dict(meta.get("arch", {}))
    if arch.get("name") != "qformer":
        raise AtelierInputError(f"{ckpt_path}: not a QFormer checkpoint (arch name {arch.get('name')!r})")
    hp = {k: v for k, v in arch.items() if k not in ("name", "phase")}
    model = QFormer(**hp)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.to(device).eval()
