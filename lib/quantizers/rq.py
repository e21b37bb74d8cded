"""Residual quantisation (RQ-VAE, Lee et al. 2022, Sec. 3.1; cited as [24] by MoVQ).

The latent vector is quantised ``depth`` times, each time quantising what the previous codes left
over: ``r_0 = z``, ``k_d = q(r_{d-1})``, ``r_d = r_{d-1} - e(k_d)``; the quantised latent is the
*sum* of the depth codes ``z_q = sum_d e(k_d)``, giving ``depth`` tokens per position (coarse to
fine). MoVQ (Sec. 4.2) contrasts this with its multichannel tokens: RQ's depths are not equally
important, the first code carries most of the signal.

Loss. Per depth d, the codebook term of M6-Fashion Eq. (3) is ``||sg[r_{d-1}] - e(k_d)||^2`` (each
code learns the residual it quantises) and the commitment term is RQ-VAE's
``||z - sg[sum_{d' <= d} e(k_d')]||^2`` (the encoder commits to every partial sum). RQ-VAE *sums*
over depths; we *average*, so the loss scale does not grow with depth and one ``beta`` / loss weight
is comparable across VQ, RQ, PQ and MoVQ in the ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.io import AtelierInputError
from lib.quantizers.base import Quantizer
from lib.quantizers.codebook import Codebook, check_int, check_codebook_options

__all__ = ["ResidualQuantizer"]


class ResidualQuantizer(Quantizer):
    """RQ with ``depth`` rounds of residual quantisation (C = depth).

    Args:
        dim: D, channels of the latent map (= code dimension at every depth).
        codebook_size: K, entries of each codebook.
        depth: number of residual rounds = tokens per position.
        shared_codebook: one codebook for all depths (RQ-VAE's choice: storage K x D regardless of
            depth) or one codebook per depth (storage depth x K x D, each specialised to its
            residual scale).
        **codebook_options: forwarded to the codebook(s).
    """

    def __init__(
        self, dim: int, codebook_size: int, depth: int = 4, shared_codebook: bool = True, **codebook_options
    ) -> None:
        check_int("dim", dim, 1)
        check_int("codebook_size", codebook_size, 1)
        check_int("depth", depth, 1)
        if not isinstance(shared_codebook, bool):
            raise AtelierInputError(f"shared_codebook must be a bool, got {shared_codebook!r}")
        check_codebook_options(codebook_options, type(self).__name__)
        super().__init__(dim=dim, codebook_size=codebook_size, num_channels=depth)
        self.shared_codebook = shared_codebook
        n_books = 1 if shared_codebook else depth
        self.depth_codebooks = nn.ModuleList(Codebook(codebook_size, dim, **codebook_options) for _ in range(n_books))

    @property
    def depth(self) -> int:
        return self.num_channels

    def codebooks(self) -> list[Codebook]:
        return list(self.depth_codebooks)

    def _book(self, d: int) -> Codebook:
        return self.depth_codebooks[0 if self.shared_codebook else d]

    def _quantize(self, x: Tensor):
        residual = x.detach()
        partial: Tensor | None = None
        residuals, indices, codebook_terms, commit_terms = [], [], [], []
        for d in range(self.depth):
            book = self._book(d)
            idx = book.quantize_indices(residual)
            codes = book.lookup(idx)
            if book.ema:
                codebook_terms.append(torch.zeros((), device=x.device))
            else:
                codebook_terms.append(F.mse_loss(codes, residual))
            # Same summation order as _decode, so decode_indices reproduces it bit for bit.
            partial = codes.detach() if partial is None else partial + codes.detach()
            commit_terms.append(F.mse_loss(x, partial))
            residuals.append(residual)
            indices.append(idx)
            residual = residual - codes.detach()

        stats = []
        if self.shared_codebook:
            book = self.depth_codebooks[0]
            all_idx = torch.cat(indices)
            update = book.update(torch.cat(residuals), all_idx) if self.training else None
            stats.append(book.stats(all_idx, update))
        else:
            for book, r, idx in zip(self.depth_codebooks, residuals, indices):
                update = book.update(r, idx) if self.training else None
                stats.append(book.stats(idx, update))
        return (
            partial,
            torch.stack(indices, dim=1),
            torch.stack(codebook_terms).mean(),
            torch.stack(commit_terms).mean(),
            stats,
        )

    def _decode(self, indices: Tensor) -> Tensor:
        partial: Tensor | None = None
        for d in range(self.depth):
            codes = self._book(d).lookup(indices[:, d])
            partial = codes if partial is None else partial + codes
        return partial

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, depth={self.num_channels}, "
            f"shared_codebook={self.shared_codebook}"
        )
