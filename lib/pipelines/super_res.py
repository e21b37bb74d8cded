"""The trained super-resolution stage (Muse Sec. 2.4) from its artifacts: the 64x64 tokenizer, the
high-res transformer, and super-resolving low-res tokens with it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

import lib.pipelines.tokenizers as tokenizer_pipe
from lib.config import super_res_settings as settings
from lib.data import fashion_mnist
from lib.data.render import colourise
from lib.generation import Condition, TransformerConfig
from lib.generation.super_res import build_super_res_model, load_super_res_model
from lib.io import AtelierInputError
from lib.models.tokenizer import load_tokenizer
from lib.pipelines.sampling import make_scheduler, sample_masked
from lib.pipelines.tokenizers import decode_tokens, load_named_tokenizer
from lib.sampling import LinearGuidanceSchedule
from lib.store import data_dir
from lib.store.super_res import model_path, tokenizer_path


def highres_images(arrays: Mapping[str, np.ndarray], idx: np.ndarray, scale: int,
                   fmnist_root: str | Path | None = None) -> np.ndarray:
    """uint8 ``[n, 32*scale, 32*scale, 3]``: the garments ``idx`` of a caption-dataset split rendered
    at ``scale`` x the resolution (same Fashion-MNIST source, colour and pattern as the split's
    32x32 images; :func:`lib.data.render.colourise`)."""
    idx = np.asarray(idx)
    names = np.asarray(arrays["names"])[idx]
    sources = {str(n)[2:].rstrip("0123456789") for n in names}  # "fmtrain01234" -> "train"
    if not sources <= {"train", "test"} or len(sources) > 1:
        raise AtelierInputError(f"highres_images: image names {sorted(sources)} do not name one Fashion-MNIST split "
                                "(expected fmtrain<i> or fmtest<i>, written by lib.data.build)")
    root = Path(fmnist_root) if fmnist_root else data_dir() / "fashion-mnist"
    grey, _ = fashion_mnist.load(root, sources.pop() if sources else "train")
    src = np.asarray(arrays["source_index"])[idx]
    return colourise(grey[src], np.asarray(arrays["colour"])[idx], np.asarray(arrays["pattern"])[idx], scale=scale)


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Area downsampling by ``scale`` (64x64 outputs -> the judges' 32x32 input)."""
    return F.avg_pool2d(images, scale) if scale > 1 else images


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by ``scale``, clamped to [-1, 1] (the no-super-res baseline)."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def highres_tokenizer_config(params: Mapping[str, Any], low_name: str, scale: int) -> dict[str, Any]:
    """The low-res tokenizer's config at ``scale`` x the image size (same downsampling factor)."""
    cfg = tokenizer_pipe.tokenizer_config(params["tokenizers"], low_name)
    cfg["image_size"] = int(cfg["image_size"]) * int(scale)
    cfg["name"] = f"{low_name}_x{scale}"
    return cfg


def build_model(params: Mapping[str, Any], low_tok, high_tok, form: str | None = None):
    """The super-res transformer of ``form`` (default ``super_res.low_res_mode``) over
    :func:`transformer_config`."""
    S = settings(params)
    return build_super_res_model(transformer_config(params, low_tok, high_tok), form or S["low_res_mode"],
                                 S["low_res_depth"])


def transformer_config(params: Mapping[str, Any], low_tok, high_tok):
    """Base-model width/depth over the high-res grid, with ``low_res = (h, w, C, K)`` of the low-res tokens."""
    G = params["generation"]
    h, w, c = high_tok.token_shape
    lh, lw, lc = low_tok.token_shape
    return TransformerConfig(grid_h=int(h), grid_w=int(w), channels=int(c), codebook_size=int(high_tok.vocab_size),
                             dim=G["dim"], depth=G["depth"], heads=G["heads"], mlp_ratio=float(G["mlp_ratio"]),
                             text_mode="cross_attention", low_res=(int(lh), int(lw), int(lc), int(low_tok.vocab_size)))


def load_trained(params: Mapping[str, Any], device: str = "cpu", form: str | None = None):
    """``(sr_model, low_tokenizer, high_tokenizer)`` of a trained stage (eval mode); ``form``: the
    comparison model of that ``low_res_mode`` instead of the configured one."""
    S = settings(params)
    for path in (tokenizer_path(), model_path(form)):
        if not path.is_file():
            raise AtelierInputError(f"{path}: missing; run the super-resolution stage first (dvc repro super_res)")
    low_name = params["generation"]["models"][S["base"]]["tokenizer"]
    low = load_named_tokenizer(params, low_name, device)
    high = load_tokenizer(tokenizer_path(), highres_tokenizer_config(params, low_name, S["scale"]),
                          disc_ndf=params["tokenizers"]["disc_ndf"], device=device)
    return load_super_res_model(model_path(form), device), low, high


def super_resolve(model, high_tok, low_tokens: torch.Tensor, text_cond, settings_: Mapping[str, Any], *,
                  sampling: Mapping[str, Any], seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """High-res tokens and images from low-res tokens ``[n, Nl, Cl]`` (+ an optional text
    :class:`~lib.generation.Condition` of ``n`` rows): MaskGIT with ``sampling_steps`` steps and the
    linear guidance schedule up to ``guidance_scale`` (Muse Sec. 2.7-2.8). Returns the
    :func:`lib.pipelines.sampling.sample_masked` dict plus ``images`` and ``seconds_per_image``."""
    n = len(low_tokens)
    # a copy: the caller's text condition is reused across calls (and resolutions) and must not
    # come back carrying these low-res tokens
    cond = dataclasses.replace(text_cond if text_cond is not None else Condition.null(n, "cpu"),
                               low_res_tokens=low_tokens)
    steps = int(settings_["sampling_steps"])
    scale = float(settings_["guidance_scale"])
    guidance = LinearGuidanceSchedule(scale, steps) if (scale > 0 and text_cond is not None) else 0.0
    t0 = time.perf_counter()
    out = sample_masked(model, cond, n, lambda: make_scheduler("maskgit", sampling, maskgit_steps=steps),
                        guidance=guidance, seed=seed, progress=progress)
    out["images"] = decode_tokens(high_tok, out["tokens"]).clamp(-1, 1)
    out["seconds_per_image"] = (time.perf_counter() - t0) / max(n, 1)
    return out
