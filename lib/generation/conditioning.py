"""What a stage-two generator is conditioned on, and the cached text features it reads.

:class:`Condition` bundles every optional signal of the three papers:

- text (Muse Sec. 2.1; M6-Fashion Sec. 3.2 "Textual Condition"): token-level frozen MiniLM features
  ``text_tokens [B, L, 384]`` with ``text_mask [B, L]`` (True = real token). ``drop [B]`` True
  replaces a row's text by the model's learned null condition -- Muse Sec. 2.7 classifier-free
  guidance trains with 10% of rows dropped, and samples with ``cond`` and ``cond.with_drop(True)``.
- visual conditions (M6-Fashion Sec. 3.2 "Visual Condition"): tokens of one or more image crops,
  ``visual_tokens [B, Lv, C]`` with their raster positions in the source grid, a validity mask
  (rows are padded to Lv) and the crop index ``visual_segment`` (where [SEP]s go).
- low-resolution tokens for a super-resolution stage (Muse Sec. 2.4): ``low_res_tokens [B, Nl, Cl]``.

:class:`TextFeatureTable` holds the token-level MiniLM features of every distinct caption of a
dataset, computed once (the frozen encoder is the slowest thing a training step would touch) and
cached as fp16 safetensors, like :func:`lib.text.cache.pooled_table` does for pooled embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lib.io import AtelierInputError, load_checkpoint, save_checkpoint
from lib.text.encoder import NAME, shared_encoder, weights_sha256

_FIELDS = ("text_tokens", "text_mask", "drop", "visual_tokens", "visual_positions", "visual_valid",
           "visual_segment", "low_res_tokens")


@dataclass
class Condition:
    """Conditioning signals of a batch; every field is optional and batch-first.

    Missing ``text_mask`` means every text token is real; missing ``drop`` means no row is dropped;
    missing ``visual_valid`` means every visual token is real; missing ``visual_segment`` means one
    crop. A condition with no text (``text_tokens`` None) makes a text-conditioned model use its
    null text for every row.
    """

    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    drop: torch.Tensor | None = None
    visual_tokens: torch.Tensor | None = None
    visual_positions: torch.Tensor | None = None
    visual_valid: torch.Tensor | None = None
    visual_segment: torch.Tensor | None = None
    low_res_tokens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {name: t.shape[0] for name in _FIELDS if (t := getattr(self, name)) is not None}
        if len(set(sizes.values())) > 1:
            raise AtelierInputError(f"Condition: fields disagree on the batch size: {sizes}")
        if self.visual_tokens is not None and self.visual_positions is None:
            raise AtelierInputError("Condition: visual_tokens need visual_positions (their raster positions)")

    @property
    def batch_size(self) -> int | None:
        for name in _FIELDS:
            if (t := getattr(self, name)) is not None:
                return int(t.shape[0])
        return None

    def _map(self, fn) -> "Condition":
        return Condition(**{name: (fn(t) if (t := getattr(self, name)) is not None else None) for name in _FIELDS})

    def to(self, device: torch.device | str) -> "Condition":
        return self._map(lambda t: t.to(device))

    def select(self, idx: torch.Tensor | Sequence[int] | slice) -> "Condition":
        """The rows ``idx`` (an index tensor, list, bool mask or slice)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
        return self._map(lambda t: t[idx.to(t.device) if torch.is_tensor(idx) else idx])

    def repeat(self, n: int) -> "Condition":
        """The batch tiled ``n`` times, like ``Tensor.repeat``: rows ``[c0, c1, c0, c1, ...]``."""
        return self._map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def repeat_interleave(self, n: int) -> "Condition":
        """Every row ``n`` times in a row: ``[c0, c0, c1, c1, ...]`` (n samples per prompt)."""
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def with_drop(self, drop: bool | torch.Tensor) -> "Condition":
        """A copy whose ``drop`` is ``drop`` (bool for every row, or ``[B]`` bool): the unconditional
        branch of classifier-free guidance is ``cond.with_drop(True)``."""
        batch = self.batch_size
        if batch is None:
            raise AtelierInputError("Condition.with_drop: the condition is empty, its batch size is unknown")
        device = next(getattr(self, n) for n in _FIELDS if getattr(self, n) is not None).device
        drop = torch.as_tensor(drop, dtype=torch.bool, device=device)
        drop = drop.expand(batch).clone() if drop.dim() == 0 else drop
        return dataclasses.replace(self, drop=drop)

    def unconditional(self) -> "Condition":
        """The M6-Fashion {} combination of the same rows: text dropped and every visual token
        marked padding (low-res tokens are kept: a super-resolution stage always sees them)."""
        out = self.with_drop(True)
        if out.visual_tokens is not None:
            out.visual_valid = torch.zeros(out.visual_tokens.shape[:2], dtype=torch.bool,
                                           device=out.visual_tokens.device)
        return out

    @staticmethod
    def cat(conditions: Sequence["Condition"]) -> "Condition":
        """Concatenate batches (for one forward pass over conditional and unconditional rows)."""
        if not conditions:
            raise AtelierInputError("Condition.cat: no conditions given")
        out = {}
        for name in _FIELDS:
            parts = [getattr(c, name) for c in conditions]
            present = [p is not None for p in parts]
            if any(present) and not all(present):
                if name == "drop":  # a missing drop is "no row dropped"
                    device = next(p for p in parts if p is not None).device
                    parts = [p if p is not None else torch.zeros(c.batch_size, dtype=torch.bool, device=device)
                             for p, c in zip(parts, conditions)]
                else:
                    raise AtelierInputError(f"Condition.cat: field '{name}' is set in some conditions only")
            out[name] = torch.cat(parts) if any(present) else None
        return Condition(**out)

    @staticmethod
    def null(batch: int, device: torch.device | str = "cpu") -> "Condition":
        """The unconditional condition of ``batch`` rows (every row dropped)."""
        return Condition(drop=torch.ones(batch, dtype=torch.bool, device=device))


class TextFeatureTable:
    """Token-level frozen text features of a list of captions, looked up by caption index.

    ``tokens`` ``[T, L, D]`` (stored fp16), ``mask`` ``[T, L]`` bool. :meth:`build` computes them
    with :class:`lib.text.encoder.FrozenTextEncoder` (or any object with the same ``encode``) and
    caches them; :meth:`condition` turns caption indices into a :class:`Condition`.
    """

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor, texts: Sequence[str] | None = None):
        if tokens.dim() != 3 or mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
            raise AtelierInputError(f"TextFeatureTable: tokens must be [T, L, D] and mask [T, L] bool, got "
                                    f"{tuple(tokens.shape)} and {tuple(mask.shape)} {mask.dtype}")
        if texts is not None and len(texts) != tokens.shape[0]:
            raise AtelierInputError(f"TextFeatureTable: {len(texts)} texts for {tokens.shape[0]} feature rows")
        self.tokens = tokens.to(torch.float16)
        self.mask = mask
        self.texts = list(texts) if texts is not None else None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    @property
    def max_length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> "TextFeatureTable":
        return TextFeatureTable(self.tokens.to(device), self.mask.to(device), self.texts)

    def condition(self, caption_ids: torch.Tensor, drop: torch.Tensor | None = None) -> Condition:
        """The text :class:`Condition` of captions ``caption_ids`` ``[B]`` (float32 features, on the
        table's device)."""
        ids = torch.as_tensor(caption_ids, dtype=torch.long)
        if ids.dim() != 1:
            raise AtelierInputError(f"TextFeatureTable.condition: caption_ids must be [B], got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise AtelierInputError(f"TextFeatureTable.condition: caption_ids must be in [0, {len(self)}), got "
                                    f"[{int(ids.min())}, {int(ids.max())}]")
        ids = ids.to(self.device)
        if drop is not None:
            drop = torch.as_tensor(drop, dtype=torch.bool).to(self.device)
        return Condition(text_tokens=self.tokens[ids].float(), text_mask=self.mask[ids], drop=drop)

    @classmethod
    def build(cls, texts: Sequence[str], cache_path: str | Path, encoder=None, batch_size: int = 256,
              progress: bool = True) -> "TextFeatureTable":
        """Features of ``texts``, read from ``cache_path`` when it holds exactly these texts, else
        computed and written there atomically (fp16 safetensors).

        ``encoder`` defaults to the shared frozen MiniLM; any object with
        ``encode(texts, batch_size=, progress=) -> {"tokens", "mask"}`` and a ``max_length`` works.
        """
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise AtelierInputError("TextFeatureTable.build: texts must be a non-empty list of strings")
        cache_path = Path(cache_path)
        if encoder is None:
            encoder, name, sha = shared_encoder(), NAME, weights_sha256
        else:
            name, sha = f"custom:{type(encoder).__name__}", (lambda: "")
        arch = {"name": "text_token_table", "encoder": name, "n": len(texts),
                "max_length": int(getattr(encoder, "max_length", 0))}
        if cache_path.exists():
            try:
                tensors, meta = load_checkpoint(cache_path, expect_arch=arch)
                if meta.get("texts") == texts:
                    return cls(tensors["tokens"], tensors["mask"].bool(), texts)
            except AtelierInputError:
                pass  # stale or corrupt cache: recompute below and overwrite atomically
        out = encoder.encode(texts, batch_size=batch_size, progress=progress)
        table = cls(out["tokens"], out["mask"].bool(), texts)
        save_checkpoint(cache_path, {"tokens": table.tokens, "mask": table.mask},
                        {"arch": arch, "texts": texts, "weights_sha256": sha()})
        return table


def class_text_table(class_names: Sequence[str], cache_path: str | Path, template: str = "{}",
                     encoder=None, progress: bool = False) -> TextFeatureTable:
    """A :class:`TextFeatureTable` of captions that name only the category (``template`` with
    ``{}`` for the name): the class-conditional setting of MoVQ Table 3, with the class label
    carried through the same text pathway as captions."""
    if "{}" not in template:
        raise AtelierInputError(f"class_text_table: template must contain '{{}}', got {template!r}")
    return TextFeatureTable.build([template.format(n) for n in class_names], cache_path, encoder=encoder,
                                  progress=progress)
