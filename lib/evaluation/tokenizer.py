"""Tokenizer evaluation: reconstruction quality, codebook usage and the sizes the tables print
(MoVQ Table 1 / Fig. 6, M6-Fashion Table 4, Muse Sec. 2.5)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lib.images import to_float, to_uint8_chw
from lib.io import AtelierInputError
from lib.metrics import codebook_stats, fid_kid, psnr, ssim


def describe(tok) -> dict[str, Any]:
    """Sizes that tables print: token grid, vocabulary, codebook storage, bits per image."""
    h, w, c = tok.token_shape
    q = tok.quantizer
    n_params = {part: int(sum(p.numel() for p in getattr(tok, part).parameters()))
                for part in ("encoder", "quantizer", "decoder")}
    return {
        "token_grid": f"{h}x{w}" + (f"x{c}" if c > 1 else ""),
        "tokens_per_image": int(h * w * c),
        "vocab_size": int(tok.vocab_size),
        "codebooks": len(q.codebooks()),
        "codebook_storage": int(q.codebook_storage),
        "bits_per_image": float(h * w * c * math.log2(tok.vocab_size)),
        "params": n_params,
    }


def codebook_usage(tok, indices) -> dict[str, Any]:
    """:func:`lib.metrics.codebook_stats` per distinct codebook, averaged.

    VQ and MoVQ (one codebook, shared by MoVQ's C chunks) pool every token; PQ and RQ with separate
    codebooks count channel ``c``'s tokens against codebook ``c`` (index 5 of group 0 and index 5
    of group 1 are different codes). ``per_codebook`` keeps each codebook's numbers.
    """
    n_books = len(tok.quantizer.codebooks())
    k = tok.vocab_size
    if n_books == 1:
        books = [codebook_stats(indices, k)]
    else:
        if n_books != indices.shape[-1]:
            raise AtelierInputError(f"codebook_usage: {n_books} codebooks but {indices.shape[-1]} token channels")
        books = [codebook_stats(indices[..., c], k) for c in range(n_books)]
    keys = ("usage_fraction", "dead_fraction", "perplexity", "normalized_perplexity")
    out: dict[str, Any] = {key: float(np.mean([b[key] for b in books])) for key in keys}
    out.update(codebook_size=k, codebooks=n_books, num_tokens=int(indices.numel()),
               used_codes=int(sum(b["used_codes"] for b in books)),
               per_codebook=[{key: b[key] for key in ("used_codes", "usage_fraction", "perplexity")} for b in books])
    return out


def evaluate_tokenizer(tok, test_images: np.ndarray, reference, *, eval_n: int | None, rfid_n: int,
                       batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Reconstruction quality of ``tok`` on the first test images.

    - PSNR / SSIM (:mod:`lib.metrics.reconstruction`) of the first ``eval_n`` test images (``None``:
      all) against their reconstructions, both as 8-bit images scaled to [0, 1];
    - codebook usage / perplexity / dead fraction over those images' tokens (:func:`codebook_usage`);
    - rFID / KID: Inception features of the reconstructions of the first ``rfid_n`` test images
      against ``reference`` (:func:`lib.metrics.reference_stats` of the first ``n_ref`` real test
      images, cached by the judges stage).

    Returns ``{"metrics": ..., "rfid_provenance": ..., "reconstructions": uint8 [n,3,H,W]}``.
    """
    n_total = len(test_images)
    n_eval = n_total if eval_n is None else min(eval_n, n_total)
    n_rfid = min(rfid_n, n_total)
    n = max(n_eval, n_rfid)
    x = to_float(test_images[:n])
    t0 = time.perf_counter()
    recon = to_uint8_chw(tok.reconstruct(x, batch_size=batch_size))
    tokens = tok.tokenize(x[:n_eval], batch_size=batch_size)
    t_recon = time.perf_counter() - t0
    real = torch.from_numpy(np.ascontiguousarray(test_images[:n])).permute(0, 3, 1, 2)
    pred01, real01 = recon[:n_eval].float() / 255.0, real[:n_eval].float() / 255.0
    t0 = time.perf_counter()
    fid = fid_kid(recon[:n_rfid], reference, progress=progress)
    t_fid = time.perf_counter() - t0
    metrics = {
        "psnr": psnr(pred01, real01),
        "ssim": ssim(pred01, real01),
        "rfid": fid["fid"],
        "rkid": fid["kid_mean"],
        "rkid_std": fid["kid_std"],
        "codebook": codebook_usage(tok, tokens),
        "num_eval_images": n_eval,
        "num_rfid_images": n_rfid,
        "seconds": {"reconstruct_and_tokenize": round(t_recon, 2), "rfid": round(t_fid, 2)},
    }
    rfid_prov = {k: fid[k] for k in ("implementation", "feature_network", "feature_layer", "feature_weights_sha256",
                                     "num_samples", "kid_subsets", "kid_subset_size", "fid_method", "seed",
                                     "device", "reference_cache") if k in fid}
    return {"metrics": metrics, "rfid_provenance": rfid_prov, "reconstructions": recon}


def grid_indices(categories: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` test images for reconstruction grids: the first image of each category in
    category order, then the next unused images (the same images in every notebook)."""
    categories = np.asarray(categories)
    picked = [int(np.flatnonzero(categories == c)[0]) for c in np.unique(categories)][:n]
    rest = [i for i in range(len(categories)) if i not in set(picked)]
    return np.array(picked + rest[: max(0, n - len(picked))], dtype=np.int64)


METRIC_IMPLEMENTATIONS = {
    "psnr": "lib.metrics.reconstruction.psnr: torchmetrics peak_signal_noise_ratio per image (data range 1), mean over images; 8-bit images",
    "ssim": "lib.metrics.reconstruction.ssim: torchmetrics structural_similarity_index_measure (Gaussian 11, sigma 1.5), mean over images; 8-bit images",
    "rfid": "lib.metrics.image_quality.fid_kid: FID of the reconstructions of the first rfid_n test images against the cached Inception statistics of the first n_ref real test images",
    "codebook": "lib.stages.tokenizer.codebook_usage: lib.metrics.reconstruction.codebook_stats per distinct codebook over the eval images' tokens, averaged",
}
