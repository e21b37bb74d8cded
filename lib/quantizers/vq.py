"""Plain vector quantisation: one code per position (VQ-VAE; M6-Fashion Eq. 1 and 3).

Every latent vector ``z_ij in R^D`` is replaced by its nearest entry of a single codebook of K
D-dimensional codes, giving one token per position (C = 1). This is the VQGAN baseline that both
M6-Fashion (Sec. 3.1, "simple straight-forward quantization operation q(.)") and MoVQ (Sec. 3,
Eq. 2) improve upon.
"""

from __future__ import annotations

from torch import Tensor

from lib.quantizers.base import Quantizer
from lib.quantizers.codebook import Codebook, check_int, check_codebook_options

__all__ = ["VectorQuantizer"]


class VectorQuantizer(Quantizer):
    """VQ with one codebook of ``codebook_size`` x ``dim`` (C = 1).

    Args:
        dim: D, channels of the latent map (= code dimension).
        codebook_size: K.
        **codebook_options: forwarded to :class:`~lib.quantizers.codebook.Codebook`
            (``beta``, ``ema``, ``kmeans_init``, ``restart_dead``, ...).
    """

    def __init__(self, dim: int, codebook_size: int, **codebook_options) -> None:
        check_int("dim", dim, 1)
        check_int("codebook_size", codebook_size, 1)
        check_codebook_options(codebook_options, type(self).__name__)
        super().__init__(dim=dim, codebook_size=codebook_size, num_channels=1)
        self.codebook = Codebook(codebook_size, dim, **codebook_options)

    def codebooks(self) -> list[Codebook]:
        return [self.codebook]

    def _quantize(self, x: Tensor):
        out = self.codebook(x)
        return out.codes, out.indices[:, None], out.codebook_loss, out.commitment_loss, [out.stats]

    def _decode(self, indices: Tensor) -> Tensor:
        return self.codebook.lookup(indices[:, 0])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}"
