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
- **super-res transformer** (``super_res.low_res_mode``, :mod:`lib.generation.super_res`): by default
  Muse's form (Fig. 4), the low-res tokens through ``low_res_depth`` self-attention blocks of their
  own, whose outputs join the text embeddings as the high-res tokens' cross-attention memory;
  ``joint`` instead prepends the low-res tokens to the high-res sequence of a
  :class:`lib.generation.MaskedTokenTransformer` (every layer attends over both);
  ``super_res.compare_forms`` also trains the other form on the same tokens, steps and seed
  (``model_<form>.safetensors``) and :func:`evaluate` scores it beside the configured one. Training: arccos
  masking of the high-res tokens, text dropped on ``generation.cond_drop`` of the rows; the low-res
  tokens are never dropped (:meth:`lib.generation.Condition.unconditional` keeps them), so
  classifier-free guidance contrasts text with no text at fixed low-res content.

Stage ``super_res`` (``python -m lib.stages.super_res train --profile P``): trains both, writes
``artifacts/super_res/{tokenizer,model}.safetensors`` and ``results/03_generators/super_res/``.
The evaluation (Muse Table 1's "base + super-res" row) is :func:`evaluate`, driven by
``notebooks/03c_super_resolution.ipynb``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import lib.config as lib_params
import lib.config.tokenizers as tokenizer_cfg
import lib.pipelines.generators as generator_pipe
import lib.pipelines.tokenizers as tokenizer_pipe
import lib.store.tokenizers as tokenizer_store
from lib import store
from lib.config.super_res import other_form
from lib.data.caption_dataset import load_split
from lib.generation import train_masked
from lib.images import to_float
from lib.io import AtelierInputError, atomic_write_json, sha256_file
from lib.metrics.reconstruction import psnr, ssim
from lib.models.tokenizer import Tokenizer, train_tokenizer
from lib.pipelines.super_res import (
    build_model,
    highres_images,
    highres_tokenizer_config,
    upsample,
)
from lib.provenance import run_info, write_metrics
from lib.stages import generator as GEN, tokens as TOK
from lib.store.super_res import artifacts_root, loss_path, metrics_path, model_path, tokenizer_path
from lib.training import write_loss_curve

#: how each ``super_res.low_res_mode`` lets the high-res tokens see the low-res ones (table rows say it)
# ---------------------------------------------------------------------------------------------
# Settings and paths
# ---------------------------------------------------------------------------------------------
#: the ``super_res`` section's checker lives in lib.config (torch-free, issue 16)
settings = lib_params.super_res_settings


# ---------------------------------------------------------------------------------------------
# Data: high-resolution renders of a split's garments
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The training stage
# ---------------------------------------------------------------------------------------------
def _write_skipped(profile: str, seed: int, reason: str) -> None:
    artifacts_root().mkdir(parents=True, exist_ok=True)
    atomic_write_json(artifacts_root() / "skipped.json", {"skipped": True, "reason": reason})
    atomic_write_json(loss_path(), [])
    print(write_metrics(metrics_path(), {"skipped": True, "reason": reason}, run_info(profile, seed, model="super_res")))


def run_train(profile: str, progress: bool = True) -> int:
    """The ``super_res`` stage: fine-tune the high-res tokenizer, tokenize both resolutions, train the
    super-res transformer (both resumable), and write checkpoints, loss curve and metrics."""
    P = lib_params.load(profile)
    S, G, TS, seed = settings(P), P["generation"], P["tokenizers"], P["seed"]
    if S["steps"] == 0:
        _write_skipped(profile, seed, f"not trained in profile {profile!r} (profiles.{profile}.super_res.steps = 0)")
        return 0
    torch.manual_seed(seed)
    low_name = G["models"][S["base"]]["tokenizer"]
    low = tokenizer_pipe.load_named_tokenizer(P, low_name)
    root = store.caption_root()
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
    tok_history = train_tokenizer(high, to_float(hi_u8), tokenizer_path(), steps=S["tokenizer_steps"],
                                  batch_size=TS["batch_size"], lr=float(S["tokenizer_lr"]), seed=seed,
                                  perceptual_weight=TS["perceptual_weight"], gan_weight=TS["gan_weight"],
                                  gan_start=tokenizer_cfg.gan_start_step(TS, S["tokenizer_steps"]), disc_ndf=TS["disc_ndf"],
                                  progress=progress)
    t_tok = time.perf_counter() - t0
    high.eval()

    # 2. token pairs and captions: the low-res tokens of the 32x32 images come from the base
    # tokenizer's cache (stage tokens@<low_name>, issue 15); only the renders, which no other stage
    # sees, are tokenized here, by the high-res tokenizer this stage has just trained.
    t0 = time.perf_counter()

    cache = TOK.load(low_name, tokenizer_checkpoint=tokenizer_store.checkpoint_path(low_name))
    if len(cache["train"]) != len(train["images"]) or len(cache["test"]) != len(test["images"]):
        raise AtelierInputError(f"{cache.path}: {len(cache['train'])}/{len(cache['test'])} train/test token grids for "
                                f"{len(train['images'])}/{len(test['images'])} images; run `dvc repro tokens@{low_name}`")
    lo_tokens = cache["train"][torch.from_numpy(sel)]
    hi_tokens = tokenizer_pipe.tokenize_images(high, hi_u8, progress=progress)
    del hi_u8
    n_eval = min(S["eval_n"], len(test["images"]))
    test_hi_u8 = highres_images(test, np.arange(n_eval), S["scale"])
    test_lo = cache["test"][:n_eval]
    test_hi = tokenizer_pipe.tokenize_images(high, test_hi_u8)
    t_tokenize = time.perf_counter() - t0
    table, ids = generator_pipe.text_table(progress=progress)

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
    real = to_float(test_hi_u8)
    recon_hi = high.reconstruct(real)
    recon_up = upsample(low.reconstruct(to_float(test["images"][:n_eval])), S["scale"])
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
                    low_tokenizer_checkpoint_sha256=sha256_file(tokenizer_store.checkpoint_path(low_name)),
                    low_res_token_cache=f"artifacts/tokens/{low_name}/{TOK.FILE}",
                    high_res_images="lib.data.render.colourise(scale=super_res.scale) of the same Fashion-MNIST "
                                    "garments, colours and patterns",
                    training=common | {"seconds": round(t_train, 1), "tokenizer_seconds": round(t_tok, 1),
                                       "tokenize_seconds": round(t_tokenize, 1),  # the renders only (low-res: token cache)
                                       "text_encoder": "frozen all-MiniLM-L6-v2 token features (cross-attention)"})
    print(write_metrics(metrics_path(), metrics, prov))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.stages.super_res", description=__doc__.split("\n\n")[0])
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
    sys.exit(main())
