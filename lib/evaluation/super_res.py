"""Super-resolution evaluation (Muse Sec. 2.4, notebook 03c): FID/KID and judge scores of base vs
super-resolved samples, token accuracy on real low-res tokens."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

import lib.pipelines.generators as generator_pipe
import lib.pipelines.tokenizers as tokenizer_pipe
from lib import store
from lib.config import super_res_settings as settings
from lib.config.super_res import other_form
from lib.data.caption_dataset import load_split
from lib.evaluation.judge_panel import JudgePanel, attribute_targets, pooled_text
from lib.images import to_float, to_uint8_chw
from lib.metrics import fid_kid, reference_stats
from lib.metrics.reconstruction import psnr, ssim
from lib.pipelines.sampling import generate
from lib.pipelines.super_res import (
    downsample,
    highres_images,
    load_trained,
    super_resolve,
    upsample,
)
from lib.sampling import LinearGuidanceSchedule
from lib.store import out_root
from lib.store.super_res import EVAL_STAGE

LOW_RES_FORM = {"cross_attention": "low-res encoder + cross-attention, Muse Fig. 4",
                "joint": "low-res tokens in the self-attention, not Muse's separate encoder"}


def evaluate(params: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Generate the first ``eval_n`` test prompts with the base model (Muse CFG, MaskGIT), then
    super-resolve its tokens; score both, and the super-res model on the real low-res tokens.

    Returns ``{"rows": [...], "reconstruction": [...], "samples": {...}, "provenance": {...}}``.
    FID at high resolution is against the Inception statistics of the first ``judges.fid_n`` real
    test garments rendered at high resolution (the base row upsampled bicubically); the judges
    (attribute accuracy, classifier score, CLIP-score) see 32x32 images (high-res outputs are
    area-downsampled), so those columns say whether super-resolution keeps what the prompt asked for.
    """
    S, G, seed = settings(params), params["generation"], params["seed"]
    SP = G["sampling"]
    scale = int(S["scale"])
    sr, low, high = load_trained(params)
    base, _, base_dec = generator_pipe.load_trained(params, S["base"])
    test = load_split(store.caption_root(), "test")
    captions = generator_pipe.load_captions()["test"]
    table, ids = generator_pipe.text_table()
    n = min(S["eval_n"], int(params["judges"]["fid_n"]), len(test["images"]))
    n_ref = min(int(params["judges"]["fid_n"]), len(test["images"]))
    prompts = [captions[i][0] for i in range(n)]
    targets = attribute_targets(test, np.arange(n))
    pooled = pooled_text(prompts)
    panel = JudgePanel(params, progress=progress)

    def cond():
        return table.condition(ids["test"][:n, 0])

    ref_hi = reference_stats(lambda: torch.from_numpy(highres_images(test, np.arange(n_ref), scale)).permute(0, 3, 1, 2)
                             .contiguous(), dataset=f"atelier-captions-x{scale}", split="test",
                             profile=params["profile"], n=n_ref, cache_dir=out_root() / "artifacts" / EVAL_STAGE / "fid_stats",
                             progress=progress)

    def score(images_lo: torch.Tensor, images_hi: torch.Tensor) -> dict[str, Any]:
        s = panel.score(images_lo, test_images_u8=test["images"], targets=targets, pooled_text=pooled)
        f = fid_kid(to_uint8_chw(images_hi), ref_hi, progress=progress)
        return {"FID": f["fid"], "KID": f["kid_mean"], "FID_32": s["fid"], "classifier_score": s["classifier_score"],
                "CLIP-score": s["clip_score"], **{k: s[k] for k in ("acc_category", "acc_colour", "acc_pattern",
                                                                     "acc_joint")},
                "fid_provenance": {k: f[k] for k in ("implementation", "feature_network", "feature_weights_sha256",
                                                     "num_samples", "fid_method", "seed") if k in f}}

    guidance = LinearGuidanceSchedule(SP["guidance_scale"], SP["maskgit_steps"])
    out_base = generate(base, base_dec, cond(), n, "maskgit", SP, guidance=guidance, seed=seed, progress=progress)
    out_sr = super_resolve(sr, high, out_base["tokens"], cond(), S, sampling=SP, seed=seed, progress=progress)
    rows = [
        {"method": f"Muse base model ({low.token_shape[0]}x{low.token_shape[1]} tokens, "
                   f"{low.config['image_size']}px; bicubic x{scale} for FID)",
         "stage": "base", **score(out_base["images"], upsample(out_base["images"], scale)),
         "seconds_per_image": out_base["seconds_per_image"]},
        {"method": f"Muse base + super-res ({high.token_shape[0]}x{high.token_shape[1]} tokens, "
                   f"{high.config['image_size']}px; {LOW_RES_FORM[S['low_res_mode']]})",
         "stage": "base + super-res", **score(downsample(out_sr["images"], scale), out_sr["images"]),
         "seconds_per_image": out_base["seconds_per_image"] + out_sr["seconds_per_image"]},
    ]
    if S["compare_forms"]:
        # the other low_res_mode, trained on the same data and steps (issue 19): same base tokens
        other = other_form(S)
        twin = load_trained(params, form=other)[0]
        out_twin = super_resolve(twin, high, out_base["tokens"], cond(), S, sampling=SP, seed=seed, progress=progress)
        rows.append({"method": f"Muse base + super-res ({high.token_shape[0]}x{high.token_shape[1]} tokens, "
                               f"{high.config['image_size']}px; {LOW_RES_FORM[other]}; comparison)",
                     "stage": f"base + super-res ({other})",
                     **score(downsample(out_twin["images"], scale), out_twin["images"]),
                     "seconds_per_image": out_base["seconds_per_image"] + out_twin["seconds_per_image"]})
    # the super-res model alone, on the real low-res tokens of the same test garments
    real_hi = to_float(highres_images(test, np.arange(n), scale))
    lo_real = tokenizer_pipe.tokenize_images(low, test["images"][:n])
    sr_real = super_resolve(sr, high, lo_real, cond(), S, sampling=SP, seed=seed)["images"]
    sr_real_notext = super_resolve(sr, high, lo_real, None, S, sampling=SP, seed=seed)["images"]
    up_real = upsample(tokenizer_pipe.decode_tokens(low, lo_real).clamp(-1, 1), scale)
    hi_recon = high.reconstruct(real_hi)
    to01 = lambda x: (x + 1) / 2  # noqa: E731
    recon = []
    views = [(f"low-res tokens -> low-res decoder -> bicubic x{scale}", up_real),
             ("low-res tokens -> super-res (text + guidance) -> high-res decoder", sr_real),
             ("low-res tokens -> super-res (no text) -> high-res decoder", sr_real_notext)]
    if S["compare_forms"]:
        views.append((f"low-res tokens -> super-res, {other_form(S)} form (text + guidance) -> high-res decoder",
                      super_resolve(twin, high, lo_real, cond(), S, sampling=SP, seed=seed)["images"]))
    views.append(("high-res tokenizer reconstruction of the real render (ceiling)", hi_recon))
    for label, imgs in views:
        recon.append({"method": label, "PSNR": psnr(to01(imgs), to01(real_hi)), "SSIM": ssim(to01(imgs), to01(real_hi))})
    k = min(10, n)
    samples = {"prompts": prompts[:k], "base": out_base["images"][:k], "super_res": out_sr["images"][:k],
               "real_high": real_hi[:k], "real_upsampled": up_real[:k], "real_super_res": sr_real[:k]}
    prov = {"num_samples": n, "fid_reference": f"first {n_ref} test garments rendered at {high.config['image_size']}px",
            "fid_reference_cache": str(ref_hi.path.relative_to(out_root())) if ref_hi.path else None,
            "base_sampling": {"sampler": "maskgit", "steps": SP["maskgit_steps"],
                              "guidance": f"linear 0->{SP['guidance_scale']}"},
            "super_res_sampling": {"sampler": "maskgit", "steps": S["sampling_steps"],
                                   "guidance": f"linear 0->{S['guidance_scale']}"},
            "prompts": "first caption of the first eval_n test images",
            "super_res_model": {"low_res_mode": S["low_res_mode"], "arch": sr.arch}}
    return {"rows": rows, "reconstruction": recon, "samples": samples, "provenance": prov}
