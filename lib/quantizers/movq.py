"""Multichannel quantisation with one shared codebook (MoVQ, Zheng et al. 2022, Sec. 3.1,
"Multichannel representation").

The latent vector ``z_ij in R^D`` is split along the channel dimension into C chunks of D/C
dimensions, and *every* chunk is quantised (MoVQ Eq. 2) against the *same* codebook of K entries of
dimension D/C. A position is thus described by C tokens from one vocabulary of size K, i.e. up to
K^C combinations, while the codebook stores only K x D/C numbers -- MoVQ's "increase the
recombination capability of the discrete codes without increasing the cost of model and codebook".

Contrast with :class:`~lib.quantizers.pq.ProductQuantizer`, which gives each chunk its own codebook:
here a code learnt for chunk 0 is equally available to chunk 3, so all C token positions share one
embedding table in the transformer, and every code is trained by vectors from all chunks.
"""

from __future__ import annotations

from torch import Tensor

from lib.io import AtelierInputError
from lib.quantizers.base import Quantizer
from lib.quantizers.codebook import Codebook, check_int, check_codebook_options

__all__ = ["MultichannelQuantizer"]


class MultichannelQuantizer(Quantizer):
    """MoVQ quantizer: ``num_chunks`` chunks of ``dim // num_chunks`` sharing one K-entry codebook.

    Chunk ``c`` is channels ``[c*D/C, (c+1)*D/C)`` of the latent and token ``indices[..., c]``.

    Args:
        dim: D, channels of the latent map; must be divisible by ``num_chunks``.
        codebook_size: K, entries of the single shared codebook.
        num_chunks: C (MoVQ uses 4).
        **codebook_options: forwarded to the shared :class:`~lib.quantizers.codebook.Codebook`.
    """

    def __init__(self, dim: int, codebook_size: int, num_chunks: int = 4, **codebook_options) -> None:
        check_int("dim", dim, 1)
        check_int("codebook_size", codebook_size, 1)
        check_int("num_chunks", num_chunks, 1)
        if dim % num_chunks:
            raise AtelierInputError(f"num_chunks={num_chunks} must divide dim={dim} (MoVQ splits channels evenly)")
        check_codebook_options(codebook_options, type(self).__name__)
        super().__init__(dim=dim, codebook_size=codebook_size, num_channels=num_chunks)
        self.chunk_dim = dim // num_chunks
        self.codebook = Codebook(codebook_size, self.chunk_dim, **codebook_options)

    @property
    def num_chunks(self) -> int:
        return self.num_channels

    def codebooks(self) -> list[Codebook]:
        return [self.codebook]

    def _quantize(self, x: Tensor):
        n = x.shape[0]
        # All chunks go through the codebook as one batch: one lookup, one EMA/usage update per step.
        out = self.codebook(x.reshape(n * self.num_channels, self.chunk_dim))
        codes = out.codes.reshape(n, self.dim)
        indices = out.indices.reshape(n, self.num_channels)
        return codes, indices, out.codebook_loss, out.commitment_loss, [out.stats]

    def _decode(self, indices: Tensor) -> Tensor:
        return self.codebook.lookup(indices).reshape(indices.shape[0], self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, num_chunks={self.num_channels}"
