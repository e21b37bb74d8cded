"""The Muse super-resolution stage (Muse Sec. 2.4, Fig. 4): high-res tokens from low-res tokens + text.

Muse generates a 16x16 token grid with its base model and then a 64x64 grid with a second masked
transformer conditioned on the base tokens and on the text; we keep the factor 2 at our size:

- **low-res tokens**: the 8x8 grid of the base generator's tokenizer (``super_res.base`` names a
  trained generator of ``generation.models``; its tokenizer encodes the 32x32 images);
- **high-res images**: the same garments rendered at ``32 * scale`` pixels
  (:func:`lib.data.render.colourise` with ``scale``: the real Fashion-MNIST silhouette upsampled,
  the pattern drawn crisply), not an interpolation of the 32x32 images, so there is detail to add;
- **high-res tokenizer**: the base tokenizer's architecture at ``32 * scale`` pixels (the same
  downsampling, hence a ``16x16`` grid), *initialised from the base tokenizer's weights* and
  fine-tuned on the high-res renders (``tokenizer_steps``): Muse trains a separate VQGAN per
  resolution; starting from the low-res one is our shortcut, it keeps the colours a short CPU run
  would otherwise lose;
- **super-res transformer** (``super_res.low_res_mode``, :mod:`lib.super_res_model`): by default
  Muse's form (Fig. 4), the low-res tokens through ``low_res_depth`` self-attention blocks of their
  own, whose outputs join the text embeddings as the high-res tokens' cross-attention memory;
  ``joint`` instead prepends the low-res tokens to the high-res sequence of a
  :class:`lib.generation.MaskedTokenTransformer` (every layer attends over both);
  ``super_res.compare_forms`` also trains the other form on the same tokens, steps and seed
  (``model_<form>.safetensors``) and :func:`evaluate` scores it beside the configured one. Training: arccos
  masking of the high-res tokens, text dropped on ``generation.cond_drop`` of the rows; the low-res
  tokens are never dropped (:meth:`lib.generation.Condition.unconditional` keeps them), so
  classifier-free guidance contrasts text with no text at fixed low-res content.

Stage ``super_res`` (``python -m lib.super_res train --profile P``): trains both, writes
``artifacts/super_res/{tokenizer,model}.safetensors`` and ``results/03_generators/super_res/``.
The evaluation (Muse Table 1's "base + super-res" row) is :func:`evaluate`, driven by
``notebooks/03c_super_resolution.ipynb``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from . import params as lib_params
from .io import AtelierInputError, atomic_write_json
from .paths import out_root

STAGE = "03_generators/super_res"
#: how each ``super_res.low_res_mode`` lets the high-res tokens see the low-res ones (table rows say it)
LOW_RES_FORM = {"cross_attention": "low-res encoder + cross-attention, Muse Fig. 4",
                "joint": "low-res tokens in the self-attention, not Muse's separate encoder"}
EVAL_STAGE = "03c_super_resolution"


# ---------------------------------------------------------------------------------------------
# Settings and paths
# ---------------------------------------------------------------------------------------------
#: the ``super_res`` section's checker lives in lib.params (torch-free, issue 16)
settings = lib_params.super_res_settings


def artifacts_root() -> Path:
    return out_root() / "artifacts" / "super_res"


def tokenizer_path() -> Path:
    return artifacts_root() / "tokenizer.safetensors"


def model_path(form: str | None = None) -> Path:
    """The configured form's checkpoint; ``form``: the other form's, trained for the comparison
    (``super_res.compare_forms``)."""
    return artifacts_root() / ("model.safetensors" if form is None else f"model_{form}.safetensors")


def other_form(S: Mapping[str, Any]) -> str:
    """The ``low_res_mode`` that ``super_res.compare_forms`` trains beside the configured one."""
    return "joint" if S["low_res_mode"] == "cross_attention" else "cross_attention"


def metrics_path() -> Path:
    return out_root() / "results" / STAGE / "metrics.json"


def loss_path() -> Path:
    return out_root() / "results" / STAGE / "loss.json"


# ---------------------------------------------------------------------------------------------
# Data: high-resolution renders of a split's garments
# ---------------------------------------------------------------------------------------------
def highres_images(arrays: Mapping[str, np.ndarray], idx: np.ndarray, scale: int,
                   fmnist_root: str | Path | None = None) -> np.ndarray:
    """uint8 ``[n, 32*scale, 32*scale, 3]``: the garments ``idx`` of a caption-dataset split rendered
    at ``scale`` x the resolution (same Fashion-MNIST source, colour and pattern as the split's
    32x32 images; :func:`lib.data.render.colourise`)."""
    from .data import fashion_mnist
    from .data.render import colourise
    from .paths import data_dir

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


def _float(images_u8: np.ndarray) -> torch.Tensor:
    from .tokenizers import to_float

    return to_float(images_u8)


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Area downsampling by ``scale`` (64x64 outputs -> the judges' 32x32 input)."""
    return F.avg_pool2d(images, scale) if scale > 1 else images


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by ``scale``, clamped to [-1, 1] (the no-super-res baseline)."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def highres_tokenizer_config(params: Mapping[str, Any], low_name: str, scale: int) -> dict[str, Any]:
    """The low-res tokenizer's config at ``scale`` x the image size (same downsampling factor)."""
    from . import tokenizers as T

    cfg = T.tokenizer_config(params["tokenizers"], low_name)
    cfg["image_size"] = int(cfg["image_size"]) * int(scale)
    cfg["name"] = f"{low_name}_x{scale}"
    return cfg


def build_model(params: Mapping[str, Any], low_tok, high_tok, form: str | None = None):
    """The super-res transformer of ``form`` (default ``super_res.low_res_mode``) over
    :func:`transformer_config`."""
    from .super_res_model import build_super_res_model

    S = settings(params)
    return build_super_res_model(transformer_config(params, low_tok, high_tok), form or S["low_res_mode"],
                                 S["low_res_depth"])


def transformer_config(params: Mapping[str, Any], low_tok, high_tok):
    """Base-model width/depth over the high-res grid, with ``low_res = (h, w, C, K)`` of the low-res tokens."""
    from .generation import TransformerConfig

    G = params["generation"]
    h, w, c = high_tok.token_shape
    lh, lw, lc = low_tok.token_shape
    return TransformerConfig(grid_h=int(h), grid_w=int(w), channels=int(c), codebook_size=int(high_tok.vocab_size),
                             dim=G["dim"], depth=G["depth"], heads=G["heads"], mlp_ratio=float(G["mlp_ratio"]),
                             text_mode="cross_attention", low_res=(int(lh), int(lw), int(lc), int(low_tok.vocab_size)))


def load_trained(params: Mapping[str, Any], device: str = "cpu", form: str | None = None):
    """``(sr_model, low_tokenizer, high_tokenizer)`` of a trained stage (eval mode); ``form``: the
    comparison model of that ``low_res_mode`` instead of the configured one."""
    from .generators import load_named_tokenizer
    from .models.tokenizer import load_tokenizer
    from .super_res_model import load_super_res_model

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
    :func:`lib.synthesis.sample_masked` dict plus ``images`` and ``seconds_per_image``."""
    from .generation import Condition
    from .sampling import LinearGuidanceSchedule
    from .synthesis import decode, make_scheduler, sample_masked

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
    out["images"] = decode(high_tok, out["tokens"]).clamp(-1, 1)
    out["seconds_per_image"] = (time.perf_counter() - t0) / max(n, 1)
    return out


# ---------------------------------------------------------------------------------------------
# The training stage
# ---------------------------------------------------------------------------------------------
def _write_skipped(profile: str, seed: int, reason: str) -> None:
    from .provenance import run_info, write_metrics

    artifacts_root().mkdir(parents=True, exist_ok=True)
    atomic_write_json(artifacts_root() / "skipped.json", {"skipped": True, "reason": reason})
    atomic_write_json(loss_path(), [])
    print(write_metrics(metrics_path(), {"skipped": True, "reason": reason}, run_info(profile, seed, model="super_res")))


def run_train(profile: str, progress: bool = True) -> int:
    """The ``super_res`` stage: fine-tune the high-res tokenizer, tokenize both resolutions, train the
    super-res transformer (both resumable), and write checkpoints, loss curve and metrics."""
    from . import generators as GEN
    from . import params as lib_params
    from . import tokenizers as T
    from .data.caption_dataset import load_split
    from .generation import train_masked
    from .io import sha256_file
    from .metrics.reconstruction import psnr, ssim
    from .models.tokenizer import Tokenizer, train_tokenizer
    from .provenance import run_info, write_metrics
    from .training import write_loss_curve

    P = lib_params.load(profile)
    S, G, TS, seed = settings(P), P["generation"], P["tokenizers"], P["seed"]
    if S["steps"] == 0:
        _write_skipped(profile, seed, f"not trained in profile {profile!r} (profiles.{profile}.super_res.steps = 0)")
        return 0
    torch.manual_seed(seed)
    low_name = G["models"][S["base"]]["tokenizer"]
    low = GEN.load_named_tokenizer(P, low_name)
    root = GEN.caption_root()
    train, test = load_split(root, "train"), load_split(root, "test")
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.permutation(len(train["images"]))[:min(S["train_images"], len(train["images"]))])
    t0 = time.perf_counter()
    hi_u8 = highres_images(train, sel, S["scale"])
    print(f"[super_res] rendered {len(sel)} train garments at {hi_u8.shape[1]}x{hi_u8.shape[2]} "
          f"in {time.perf_counter() - t0:.0f} s")

    # 1. the high-res tokenizer: the low-res tokenizer's weights, fine-tuned at scale x the size
    artifacts_root().mkdir(parents=True, exist_ok=True)
    high = Tokenizer(highres_tokenizer_config(P, low_name, S["scale"]))
    missing, unexpected = high.load_state_dict(low.state_dict(), strict=False)
    if missing or unexpected:
        raise AtelierInputError(f"super_res: tokenizer {low_name!r} cannot initialise its x{S['scale']} copy "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    t0 = time.perf_counter()
    tok_history = train_tokenizer(high, _float(hi_u8), tokenizer_path(), steps=S["tokenizer_steps"],
                                  batch_size=TS["batch_size"], lr=float(S["tokenizer_lr"]), seed=seed,
                                  perceptual_weight=TS["perceptual_weight"], gan_weight=TS["gan_weight"],
                                  gan_start=T.gan_start_step(TS, S["tokenizer_steps"]), disc_ndf=TS["disc_ndf"],
                                  progress=progress)
    t_tok = time.perf_counter() - t0
    high.eval()

    # 2. token pairs and captions: the low-res tokens of the 32x32 images come from the base
    # tokenizer's cache (stage tokens@<low_name>, issue 15); only the renders, which no other stage
    # sees, are tokenized here, by the high-res tokenizer this stage has just trained.
    t0 = time.perf_counter()
    from . import tokens as TOK

    cache = TOK.load(low_name, tokenizer_checkpoint=T.checkpoint_path(low_name))
    if len(cache["train"]) != len(train["images"]) or len(cache["test"]) != len(test["images"]):
        raise AtelierInputError(f"{cache.path}: {len(cache['train'])}/{len(cache['test'])} train/test token grids for "
                                f"{len(train['images'])}/{len(test['images'])} images; run `dvc repro tokens@{low_name}`")
    lo_tokens = cache["train"][torch.from_numpy(sel)]
    hi_tokens = GEN.tokenize_images(high, hi_u8, progress=progress)
    del hi_u8
    n_eval = min(S["eval_n"], len(test["images"]))
    test_hi_u8 = highres_images(test, np.arange(n_eval), S["scale"])
    test_lo = cache["test"][:n_eval]
    test_hi = GEN.tokenize_images(high, test_hi_u8)
    t_tokenize = time.perf_counter() - t0
    table, ids = GEN.text_table(progress=progress)

    # 3. the super-res transformer
    model = build_model(P, low, high)
    warmup = min(int(G["warmup_steps"]), max(1, S["steps"] // 10))
    common = dict(steps=S["steps"], batch_size=G["batch_size"], lr=G["lr"], seed=seed, warmup_steps=warmup,
                  cond_drop=G["cond_drop"], label_smoothing=G["label_smoothing"])
    t0 = time.perf_counter()
    history = train_masked(model, hi_tokens, model_path(), caption_ids=ids["train"][torch.from_numpy(sel)],
                           text_table=table, low_res_tokens=lo_tokens, mode="muse", progress=progress, **common)
    t_train = time.perf_counter() - t0
    model.eval()
    write_loss_curve(history, loss_path(), every=max(1, len(history) // 300))

    # 4. checks that need no judge: held-out masked-token accuracy with and without the low-res
    # tokens' information (shuffled across rows), and the high-res tokenizer's reconstruction
    test_cond = table.condition(ids["test"][:n_eval, 0])
    test_cond.low_res_tokens = test_lo
    shuffled = table.condition(ids["test"][:n_eval, 0])
    shuffled.low_res_tokens = test_lo[torch.randperm(n_eval, generator=torch.Generator().manual_seed(seed))]

    def checks(m) -> tuple[float, float]:
        return (GEN.heldout_accuracy(m, test_hi, test_cond, seed=seed),
                GEN.heldout_accuracy(m, test_hi, shuffled, seed=seed))

    acc, acc_shuffled = checks(model)
    # 5. issue 19: the other form on the same tokens, steps and seed, for 03c's comparison
    comparison = {}
    if S["compare_forms"]:
        other = other_form(S)
        torch.manual_seed(seed)
        twin = build_model(P, low, high, other)
        t0 = time.perf_counter()  # t_train is the configured form's training time
        twin_history = train_masked(twin, hi_tokens, model_path(other), caption_ids=ids["train"][torch.from_numpy(sel)],
                                    text_table=table, low_res_tokens=lo_tokens, mode="muse", progress=progress, **common)
        twin.eval()
        twin_acc, twin_shuffled = checks(twin)
        t_twin = time.perf_counter() - t0
        comparison = {form: {"heldout_acc": a, "heldout_acc_low_res_shuffled": b,
                             "final_train_loss": float(np.mean([h["loss"] for h in hist[-50:]])),
                             "parameters": int(sum(p.numel() for p in m.parameters())), "train_seconds": round(t, 1)}
                      for form, a, b, hist, m, t in ((S["low_res_mode"], acc, acc_shuffled, history, model, t_train),
                                                     (other, twin_acc, twin_shuffled, twin_history, twin, t_twin))}
    real = _float(test_hi_u8)
    recon_hi = high.reconstruct(real)
    recon_up = upsample(low.reconstruct(_float(test["images"][:n_eval])), S["scale"])
    to01 = lambda x: (x + 1) / 2  # noqa: E731
    last = history[-50:]
    metrics = {
        "skipped": False, "steps": S["steps"], "tokenizer_steps": S["tokenizer_steps"], "base": S["base"],
        "low_res_mode": S["low_res_mode"], "form_comparison": comparison,
        "low_res_tokenizer": low_name, "low_token_shape": list(low.token_shape),
        "high_token_shape": list(high.token_shape), "high_image_size": int(high.config["image_size"]),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "final_train_loss": float(np.mean([h["loss"] for h in last])),
        "final_train_acc": float(np.mean([h["acc"] for h in last])),
        "heldout_acc": acc, "heldout_acc_low_res_shuffled": acc_shuffled,
        "heldout_acc_definition": ("masked-token accuracy of the high-res tokens at mask rate 0.5, first caption, "
                                   "first eval_n test images; 'shuffled': the low-res tokens of other images"),
        "high_tokenizer_psnr": psnr(to01(recon_hi), to01(real)), "high_tokenizer_ssim": ssim(to01(recon_hi), to01(real)),
        "low_tokenizer_bicubic_psnr": psnr(to01(recon_up), to01(real)),
        "low_tokenizer_bicubic_ssim": ssim(to01(recon_up), to01(real)),
        "reconstruction_definition": (f"PSNR/SSIM against the {n_eval} first test garments rendered at "
                                      f"{high.config['image_size']}x{high.config['image_size']}: the high-res "
                                      "tokenizer's reconstruction vs the low-res tokenizer's 32x32 reconstruction "
                                      "upsampled bicubically"),
        "num_train_images": int(len(sel)), "num_heldout_images": int(n_eval),
        "final_tokenizer_loss_rec": float(np.mean([h["loss_rec"] for h in tok_history[-50:]])),
    }
    prov = run_info(profile, seed, model="super_res", settings=S, transformer=model.arch,
                    high_tokenizer=highres_tokenizer_config(P, low_name, S["scale"]),
                    checkpoint="artifacts/super_res/model.safetensors", checkpoint_sha256=sha256_file(model_path()),
                    tokenizer_checkpoint="artifacts/super_res/tokenizer.safetensors",
                    tokenizer_checkpoint_sha256=sha256_file(tokenizer_path()),
                    low_tokenizer_checkpoint_sha256=sha256_file(T.checkpoint_path(low_name)),
                    low_res_token_cache=f"artifacts/tokens/{low_name}/{TOK.FILE}",
                    high_res_images="lib.data.render.colourise(scale=super_res.scale) of the same Fashion-MNIST "
                                    "garments, colours and patterns",
                    training=common | {"seconds": round(t_train, 1), "tokenizer_seconds": round(t_tok, 1),
                                       "tokenize_seconds": round(t_tokenize, 1),  # the renders only (low-res: token cache)
                                       "text_encoder": "frozen all-MiniLM-L6-v2 token features (cross-attention)"})
    print(write_metrics(metrics_path(), metrics, prov))
    return 0


# ---------------------------------------------------------------------------------------------
# Evaluation (Muse Table 1: base vs base + super-res)
# ---------------------------------------------------------------------------------------------
def evaluate(params: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Generate the first ``eval_n`` test prompts with the base model (Muse CFG, MaskGIT), then
    super-resolve its tokens; score both, and the super-res model on the real low-res tokens.

    Returns ``{"rows": [...], "reconstruction": [...], "samples": {...}, "provenance": {...}}``.
    FID at high resolution is against the Inception statistics of the first ``judges.fid_n`` real
    test garments rendered at high resolution (the base row upsampled bicubically); the judges
    (attribute accuracy, classifier score, CLIP-score) see 32x32 images (high-res outputs are
    area-downsampled), so those columns say whether super-resolution keeps what the prompt asked for.
    """
    from . import generators as GEN
    from .data.caption_dataset import load_split
    from .metrics import fid_kid, reference_stats
    from .metrics.reconstruction import psnr, ssim
    from .sampling import LinearGuidanceSchedule
    from .scoring import JudgePanel, attribute_targets, pooled_text, to_uint8
    from .synthesis import generate

    S, G, seed = settings(params), params["generation"], params["seed"]
    SP = G["sampling"]
    scale = int(S["scale"])
    sr, low, high = load_trained(params)
    base, _, base_dec = GEN.load_trained(params, S["base"])
    test = load_split(GEN.caption_root(), "test")
    captions = GEN.load_captions()["test"]
    table, ids = GEN.text_table()
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
        f = fid_kid(to_uint8(images_hi), ref_hi, progress=progress)
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
    real_hi = _float(highres_images(test, np.arange(n), scale))
    lo_real = GEN.tokenize_images(low, test["images"][:n])
    sr_real = super_resolve(sr, high, lo_real, cond(), S, sampling=SP, seed=seed)["images"]
    sr_real_notext = super_resolve(sr, high, lo_real, None, S, sampling=SP, seed=seed)["images"]
    up_real = upsample(GEN.decode_tokens(low, lo_real).clamp(-1, 1), scale)
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


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.super_res", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the high-res tokenizer and the super-res transformer")
    tr.add_argument("--profile", required=True)
    args = parser.parse_args(argv)
    try:
        return run_train(args.profile)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
