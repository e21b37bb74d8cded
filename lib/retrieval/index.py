"""A gallery of embeddings searchable by cosine similarity: exact (chunked matmul) or faiss.

``exact`` is the reference: L2-normalised gallery, queries normalised, ``queries @ gallery.T`` in
query chunks, top-k per row. ``faiss`` (an inner-product flat index, the same scores up to float
rounding) is for galleries large enough that a user has faiss installed; it is imported only when
asked for, since no faiss wheel is part of this project's environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lib.io import AtelierInputError, load_checkpoint, save_checkpoint

BACKENDS = ("exact", "faiss")


def _import_faiss():
    try:
        # optional: the exact torch search is the default; faiss only when asked for
        import faiss  # noqa: F401  (optional dependency)
    except ImportError:
        raise AtelierInputError(
            "backend='faiss' needs the faiss package, which is not installed in this environment: install "
            "'faiss-cpu' (pip install faiss-cpu) or 'faiss-gpu' from PyPI or conda-forge, or use backend='exact' "
            "(same results, a chunked matrix product)") from None
    return faiss


class RetrievalIndex:
    """Embeddings ``[G, e]`` (L2-normalised on construction unless ``normalize=False``) with
    optional ``ids`` (one per row).

    ``search(queries [Q, e], k)`` returns ``(scores [Q, k], indices [Q, k])``, best first; scores
    are cosine similarities. ``save``/``load`` round-trip through safetensors.
    """

    def __init__(self, embeddings: torch.Tensor, ids: Optional[Sequence] = None, backend: str = "exact",
                 chunk: int = 1024, normalize: bool = True):
        if backend not in BACKENDS:
            raise AtelierInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        emb = torch.as_tensor(embeddings)
        if emb.dim() != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise AtelierInputError(f"embeddings must be a non-empty [G, e] matrix, got shape {tuple(emb.shape)}")
        if not bool(torch.isfinite(emb).all()):
            raise AtelierInputError("embeddings contain NaN or inf")
        if ids is not None:
            ids = list(ids)
            if len(ids) != emb.shape[0]:
                raise AtelierInputError(f"{len(ids)} ids for {emb.shape[0]} embeddings")
            if len(set(map(str, ids))) != len(ids):
                raise AtelierInputError("ids contain duplicates")
        if chunk < 1:
            raise AtelierInputError(f"chunk must be >= 1, got {chunk}")
        # normalize=False: rows are unit vectors already (a saved index); re-normalising would move
        # them by float rounding and break exact save/load round trips.
        self.embeddings = F.normalize(emb.float(), dim=1) if normalize else emb.float()
        self.ids, self.backend, self.chunk = ids, backend, chunk
        self._faiss_index = None
        if backend == "faiss":
            faiss = _import_faiss()
            self._faiss_index = faiss.IndexFlatIP(self.dim)
            self._faiss_index.add(self.embeddings.cpu().numpy())

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` gallery rows for every query: ``(scores [Q, k], indices [Q, k])``, best first."""
        q = torch.as_tensor(queries)
        if q.dim() == 1:
            q = q[None]
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise AtelierInputError(f"queries must be [Q, {self.dim}], got shape {tuple(q.shape)}")
        if not 1 <= int(k) <= len(self):
            raise AtelierInputError(f"k must be in [1, {len(self)}] (the gallery size), got {k}")
        q = F.normalize(q.float(), dim=1)
        if self._faiss_index is not None:
            scores, idx = self._faiss_index.search(q.cpu().numpy(), int(k))
            return torch.from_numpy(scores).to(q.device), torch.from_numpy(idx).long().to(q.device)
        gallery = self.embeddings.to(q.device)
        out_s, out_i = [], []
        for part in q.split(self.chunk):
            s, i = (part @ gallery.T).topk(int(k), dim=1)
            out_s.append(s)
            out_i.append(i)
        return torch.cat(out_s), torch.cat(out_i)

    def ids_of(self, indices: torch.Tensor) -> list:
        """Row ``indices`` mapped to ids (a list of lists for ``[Q, k]``)."""
        if self.ids is None:
            raise AtelierInputError("this index was built without ids")
        return [[self.ids[int(i)] for i in row] for row in torch.as_tensor(indices).reshape(-1, indices.shape[-1])]

    def save(self, path: str | Path) -> Path:
        """Atomic safetensors: the normalised embeddings, ids in the header."""
        return save_checkpoint(path, {"embeddings": self.embeddings},
                               {"arch": {"name": "retrieval_index", "dim": self.dim},
                                "ids": None if self.ids is None else [str(i) if not isinstance(i, (int, str)) else i
                                                                      for i in self.ids]})

    @classmethod
    def load(cls, path: str | Path, backend: str = "exact", chunk: int = 1024) -> "RetrievalIndex":
        tensors, meta = load_checkpoint(path)
        arch = meta.get("arch", {})
        if arch.get("name") != "retrieval_index" or "embeddings" not in tensors:
            raise AtelierInputError(f"{path}: not a RetrievalIndex file (arch {arch})")
        return cls(tensors["embeddings"], meta.get("ids"), backend=backend, chunk=chunk, normalize=False)
