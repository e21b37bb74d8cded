"""Quantizers that turn a latent map ``z [B, D, H, W]`` into tokens ``[B, H, W, C]`` (issue 4).

One module per scheme, one result type (:class:`QuantizerOutput`), one codebook implementation
(:class:`Codebook`) so that the ablation compares schemes rather than codebook tricks:

==========  ===============================  =========================================  ==========
kind        class                            scheme                                     C
==========  ===============================  =========================================  ==========
``"vq"``    :class:`VectorQuantizer`         one K x D codebook (VQ-VAE / VQGAN)        1
``"rq"``    :class:`ResidualQuantizer`       ``depth`` residual rounds (RQ-VAE)         depth
``"pq"``    :class:`ProductQuantizer`        M groups, separate K x D/M codebooks       M
                                             (M6-Fashion Sec. 3.1)
``"movq"``  :class:`MultichannelQuantizer`   C chunks, ONE shared K x D/C codebook      C
                                             (MoVQ Sec. 3.1)
==========  ===============================  =========================================  ==========

Build one with :func:`build_quantizer` and get the equal-storage ablation grid from
:func:`equal_storage_configs`.
"""

from __future__ import annotations

import inspect
from typing import Any

from lib.io import AtelierInputError
from lib.quantizers.base import STATS_KEYS, Quantizer, QuantizerOutput
from lib.quantizers.codebook import CODEBOOK_OPTIONS, Codebook, CodebookOutput, check_codebook_options
from lib.quantizers.movq import MultichannelQuantizer
from lib.quantizers.pq import ProductQuantizer
from lib.quantizers.rq import ResidualQuantizer
from lib.quantizers.vq import VectorQuantizer

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "STATS_KEYS",
    "Codebook",
    "CodebookOutput",
    "CODEBOOK_OPTIONS",
    "check_codebook_options",
    "VectorQuantizer",
    "ResidualQuantizer",
    "ProductQuantizer",
    "MultichannelQuantizer",
    "QUANTIZERS",
    "build_quantizer",
    "equal_storage_configs",
]

QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": VectorQuantizer,
    "rq": ResidualQuantizer,
    "pq": ProductQuantizer,
    "movq": MultichannelQuantizer,
}
"""kind -> class, for :func:`build_quantizer`."""

# The constructor argument that sets C for each kind; build_quantizer also accepts num_channels.
_CHANNEL_PARAM = {"vq": None, "rq": "depth", "pq": "num_groups", "movq": "num_chunks"}


def build_quantizer(kind: str, **kw: Any) -> Quantizer:
    """Construct the quantizer ``kind`` (one of ``"vq"``, ``"rq"``, ``"pq"``, ``"movq"``).

    ``kw`` are the class's constructor arguments plus any :class:`Codebook` option. As a uniform
    spelling across kinds, ``num_channels`` may be given instead of ``depth`` / ``num_groups`` /
    ``num_chunks`` (and must be 1 for ``"vq"``). Raises ``ValueError`` naming the bad kind or
    parameter.
    """
    if not isinstance(kind, str) or kind.lower() not in QUANTIZERS:
        raise AtelierInputError(f"unknown quantizer kind {kind!r}; expected one of {', '.join(map(repr, QUANTIZERS))}")
    kind = kind.lower()
    cls = QUANTIZERS[kind]
    kw = dict(kw)
    if "num_channels" in kw:
        channels = kw.pop("num_channels")
        param = _CHANNEL_PARAM[kind]
        if param is None:
            if channels != 1:
                raise AtelierInputError(f"build_quantizer('vq'): num_channels must be 1 for plain VQ, got {channels!r}")
        elif param in kw:
            raise AtelierInputError(f"build_quantizer({kind!r}): give either num_channels or {param}, not both")
        else:
            kw[param] = channels
    own = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    unknown = sorted(set(kw) - set(own) - set(CODEBOOK_OPTIONS))
    if unknown:
        raise AtelierInputError(
            f"build_quantizer({kind!r}): unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; {cls.__name__} takes {', '.join(own)} and the codebook "
            f"options {', '.join(CODEBOOK_OPTIONS)}"
        )
    missing = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name in own and p.default is inspect.Parameter.empty and name not in kw
    ]
    if missing:
        raise AtelierInputError(f"build_quantizer({kind!r}): missing required parameter(s) {', '.join(map(repr, missing))}")
    return cls(**kw)


def equal_storage_configs(
    vq_codebook_size: int = 1024,
    dim: int = 64,
    channels: int = 4,
    rq_shared_codebook: bool = False,
    **codebook_options: Any,
) -> dict[str, dict[str, Any]]:
    """Ablation configs (kind -> :func:`build_quantizer` kwargs) with identical codebook storage.

    "Storage" is :attr:`Quantizer.codebook_storage`: stored entries x their dimension, summed over
    distinct codebooks -- the memory (and parameter count) the quantizer adds. All four kinds work on
    the same latent dimension ``dim`` (so encoder and decoder are identical across the ablation) and
    the multi-token kinds use the same ``channels`` C. Matching storage then fixes each codebook
    size; with the defaults (D = 64, C = 4) every config stores 1024 x 64 = 65,536 numbers:

    ======  ===========================================  =======  ===========  ===============
    kind    codebooks                                    storage  vocab / ch.  bits / position
    ======  ===========================================  =======  ===========  ===============
    vq      1 x 1024 entries x 64 dims                   65,536   1024         10
    rq      4 depths x 256 entries x 64 dims (separate)  65,536   256          32
    pq      4 groups x 1024 entries x 16 dims            65,536   1024         40
    movq    1 shared x 4096 entries x 16 dims            65,536   4096         48
    ======  ===========================================  =======  ===========  ===============

    Why not the "natural" sizes (PQ 4 x 256 x 16, MoVQ 1024 x 16)? Those store 16,384 numbers, a
    quarter of VQ's: splitting D into C chunks divides each entry's size by C, so at equal storage PQ
    affords C times *more entries in total* (1024 per group) and MoVQ's single shared codebook
    C times more entries than VQ (4096). RQ keeps full-D entries, so its ``depth`` separate
    codebooks must share VQ's entry budget (256 each). An RQ with one codebook shared by all depths
    (RQ-VAE's own choice) stores 1024 x 64 = 65,536 too: ``rq_shared_codebook=True`` selects it
    (vocab 1024, 40 bits / position). The consequence -- equal storage means *unequal* vocabularies and
    bit rates -- is the point of the ablation: it asks whether a scheme wins at equal memory, not at
    equal vocabulary.

    Args:
        vq_codebook_size: entries of the reference VQ codebook; storage = ``vq_codebook_size * dim``.
            Must be divisible by ``channels`` (RQ's per-depth size).
        dim: D, latent channels; must be divisible by ``channels`` (PQ / MoVQ chunk size).
        channels: C for RQ (depth), PQ (groups) and MoVQ (chunks).
        rq_shared_codebook: RQ with one shared ``vq_codebook_size`` x ``dim`` codebook instead of
            ``channels`` separate ones of ``vq_codebook_size // channels`` entries.
        **codebook_options: added to every config (e.g. ``ema=True``, ``restart_dead=True``).
    """
    for name, value in (("vq_codebook_size", vq_codebook_size), ("dim", dim), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AtelierInputError(f"{name} must be a positive integer, got {value!r}")
    if dim % channels:
        raise AtelierInputError(f"channels={channels} must divide dim={dim} (PQ groups / MoVQ chunks split D evenly)")
    if vq_codebook_size % channels and not rq_shared_codebook:
        raise AtelierInputError(
            f"channels={channels} must divide vq_codebook_size={vq_codebook_size} "
            "(RQ's per-depth codebooks share VQ's entry budget)"
        )
    check_codebook_options(codebook_options, "equal_storage_configs")
    base = {"dim": dim, **codebook_options}
    if rq_shared_codebook:
        rq = {**base, "codebook_size": vq_codebook_size, "depth": channels, "shared_codebook": True}
    else:
        rq = {**base, "codebook_size": vq_codebook_size // channels, "depth": channels, "shared_codebook": False}
    return {
        "vq": {**base, "codebook_size": vq_codebook_size},
        "rq": rq,
        "pq": {**base, "codebook_size": vq_codebook_size, "num_groups": channels},
        "movq": {**base, "codebook_size": vq_codebook_size * channels, "num_chunks": channels},
    }
