"""Product quantisation (M6-Fashion Sec. 3.1, "Building Context-rich Vocabularies via Product
Quantization"; Jegou et al. 2011).

The latent vector ``z in R^{n_z}`` is written as the concatenation of M sub-vectors
``[z^1, ..., z^M]`` of ``n_z / M`` dimensions; each sub-vector is quantised by Eq. (1) against its
*own* sub-codebook of K entries, and the quantised latent is the concatenation
``z_q = [z_q^1, ..., z_q^M]``. The Cartesian product of the sub-codebooks holds K^M code words
while storing only M x K x n_z/M numbers. Training uses Eq. (3) on the concatenated ``z_q``, which
equals the mean of the M per-group losses since the groups have equal size.

Contrast with :class:`~lib.quantizers.movq.MultichannelQuantizer` (one codebook shared by all chunks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lib.io import AtelierInputError
from lib.quantizers.base import Quantizer
from lib.quantizers.codebook import Codebook, check_int, check_codebook_options

__all__ = ["ProductQuantizer"]


class ProductQuantizer(Quantizer):
    """PQ: ``num_groups`` sub-vectors of ``dim // num_groups``, each with a separate K-entry codebook.

    Group ``m`` is channels ``[m*D/M, (m+1)*D/M)`` of the latent and token ``indices[..., m]``
    (an index into codebook ``m``; the same index in two groups means different vectors).

    Args:
        dim: D (``n_z``), channels of the latent map; must be divisible by ``num_groups``.
        codebook_size: K, entries of *each* sub-codebook.
        num_groups: M.
        **codebook_options: forwarded to every sub-codebook.
    """

    def __init__(self, dim: int, codebook_size: int, num_groups: int = 4, **codebook_options) -> None:
        check_int("dim", dim, 1)
        check_int("codebook_size", codebook_size, 1)
        check_int("num_groups", num_groups, 1)
        if dim % num_groups:
            raise AtelierInputError(f"num_groups={num_groups} must divide dim={dim} (M6-Fashion Sec. 3.1 uses equal sub-vectors)")
        check_codebook_options(codebook_options, type(self).__name__)
        super().__init__(dim=dim, codebook_size=codebook_size, num_channels=num_groups)
        self.group_dim = dim // num_groups
        self.sub_codebooks = nn.ModuleList(
            Codebook(codebook_size, self.group_dim, **codebook_options) for _ in range(num_groups)
        )

    @property
    def num_groups(self) -> int:
        return self.num_channels

    def codebooks(self) -> list[Codebook]:
        return list(self.sub_codebooks)

    def _quantize(self, x: Tensor):
        outs = [cb(part) for cb, part in zip(self.sub_codebooks, x.split(self.group_dim, dim=1))]
        codes = torch.cat([o.codes for o in outs], dim=1)
        indices = torch.stack([o.indices for o in outs], dim=1)
        codebook_loss = torch.stack([o.codebook_loss for o in outs]).mean()
        commitment = torch.stack([o.commitment_loss for o in outs]).mean()
        return codes, indices, codebook_loss, commitment, [o.stats for o in outs]

    def _decode(self, indices: Tensor) -> Tensor:
        return torch.cat([cb.lookup(indices[:, m]) for m, cb in enumerate(self.sub_codebooks)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, num_groups={self.num_channels}"
