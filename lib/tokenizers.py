"""Named image tokenizers: configurations from ``params.yaml``, evaluation, and the DVC stage driver.

``params.yaml`` describes every tokenizer as data (validated by :mod:`lib.params`):

- ``tokenizers.<key>``: settings every tokenizer shares -- architecture (``image_size``, ``ch``,
  ``ch_mult``, ``num_res_blocks``, ``z_dim``), codebook options, training (``batch_size``, ``lr``,
  ``perceptual_weight``, ``gan_weight``, ``gan_start`` as a fraction of the steps, ``disc_ndf``) and
  the reconstruction grid size;
- ``tokenizers.configs``: name -> ``{quantizer, quantizer_kwargs, decoder, decoder_kwargs}``, each
  trained from scratch (:func:`lib.models.tokenizer.train_tokenizer`);
- ``tokenizers.finetunes``: name -> ``{base, width_mult, depth_mult}``, Muse Sec. 2.5 decoder
  fine-tunes of a trained config (:func:`lib.models.tokenizer.finetune_decoder`);
- ``profiles.<p>.tokenizers``: ``steps`` (name -> training steps; **0 = not run in this profile**),
  ``rfid_n`` and ``eval_n`` (test images for rFID and for PSNR/SSIM/codebook usage).

The DVC stages ``tokenizer`` / ``tokenizer_finetune`` run one name each through :func:`run_stage`
(``python -m lib.tokenizers stage ...``): a name the profile trains is executed with papermill
(``notebooks/02a_tokenizer.ipynb``); a name it does not train gets the same output paths with a
``skipped`` marker in about a second, so one ``foreach`` over all names serves every profile.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .io import AtelierInputError, atomic_path, atomic_write_json
from .paths import out_root

STAGE = "02_tokenizers"
CHECKPOINT = "tokenizer.safetensors"
SKIPPED_MARKER = "skipped.json"
ARCH_KEYS = ("image_size", "ch", "ch_mult", "num_res_blocks", "z_dim")


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------
def all_names(section: Mapping[str, Any]) -> list[str]:
    """Every tokenizer name: trained-from-scratch configs first, then fine-tunes (params order)."""
    return [*section["configs"], *section["finetunes"]]


def _known(section: Mapping[str, Any], name: str) -> None:
    if name not in section["configs"] and name not in section["finetunes"]:
        raise AtelierInputError(
            f"params.yaml: no tokenizer named {name!r} in tokenizers.configs or tokenizers.finetunes "
            f"(known: {', '.join(all_names(section))})"
        )


def is_finetune(section: Mapping[str, Any], name: str) -> bool:
    _known(section, name)
    return name in section["finetunes"]


def steps_of(section: Mapping[str, Any], name: str) -> int:
    """Training steps of ``name`` in the loaded profile (0: the profile does not run it)."""
    _known(section, name)
    return int(section["steps"][name])


def is_active(section: Mapping[str, Any], name: str) -> bool:
    return steps_of(section, name) > 0


def gan_start_step(section: Mapping[str, Any], steps: int) -> int:
    """First step with the discriminator on: ``gan_start`` is a fraction of the run's steps."""
    return int(round(float(section["gan_start"]) * steps))


def tokenizer_config(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The :class:`~lib.models.tokenizer.Tokenizer` config of ``name`` (shared architecture merged in,
    shared codebook options under the config's own ``quantizer_kwargs``).

    For a fine-tune this is the base's config with the wider/deeper decoder
    (:func:`lib.models.tokenizer.muse_finetune_config`), named after the fine-tune.
    """
    _known(section, name)
    if name in section["finetunes"]:
        from .models.tokenizer import muse_finetune_config

        ft = section["finetunes"][name]
        cfg = muse_finetune_config(tokenizer_config(section, ft["base"]), ft["width_mult"], ft["depth_mult"])
        cfg["name"] = name
        return cfg
    entry = copy.deepcopy(section["configs"][name])
    cfg = {key: copy.deepcopy(section[key]) for key in ARCH_KEYS}
    cfg.update(
        name=name,
        quantizer=entry["quantizer"],
        quantizer_kwargs={**copy.deepcopy(section.get("codebook") or {}), **entry["quantizer_kwargs"]},
        decoder=entry["decoder"],
        decoder_kwargs=entry.get("decoder_kwargs", {}) or {},
    )
    return cfg


def base_of(section: Mapping[str, Any], name: str) -> str | None:
    """The base config a fine-tune starts from (``None`` for a config trained from scratch)."""
    return section["finetunes"][name]["base"] if is_finetune(section, name) else None


# Paths only (nothing is created: readers must not leave empty folders in other stages' outputs;
# every writer here creates the parents atomically).
def checkpoint_path(name: str) -> Path:
    return out_root() / "artifacts" / "tokenizers" / name / CHECKPOINT


def metrics_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "metrics.json"


def loss_path(name: str) -> Path:
    return out_root() / "results" / STAGE / name / "loss.json"


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


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def to_float(images_u8: np.ndarray):
    """``[N,H,W,3]`` uint8 -> float ``[N,3,H,W]`` in [-1, 1] (the tokenizers' input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8_chw(images):
    """Float ``[N,3,H,W]`` in [-1, 1] -> uint8 ``[N,3,H,W]`` (what an image file would hold)."""
    import torch

    return torch.round((images.clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)


def codebook_usage(tok, indices) -> dict[str, Any]:
    """:func:`lib.metrics.codebook_stats` per distinct codebook, averaged.

    VQ and MoVQ (one codebook, shared by MoVQ's C chunks) pool every token; PQ and RQ with separate
    codebooks count channel ``c``'s tokens against codebook ``c`` (index 5 of group 0 and index 5
    of group 1 are different codes). ``per_codebook`` keeps each codebook's numbers.
    """
    from .metrics import codebook_stats

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
    import torch

    from .metrics import fid_kid, psnr, ssim

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
    "codebook": "lib.tokenizers.codebook_usage: lib.metrics.reconstruction.codebook_stats per distinct codebook over the eval images' tokens, averaged",
}


# ---------------------------------------------------------------------------------------------
# The DVC stage driver
# ---------------------------------------------------------------------------------------------
def executed_notebook_path(name: str) -> Path:
    return out_root() / "artifacts" / "executed" / "02a_tokenizer" / f"{name}.ipynb"


def figure_path(name: str) -> Path:
    """Where ``save_figure(fig, STAGE, name)`` writes."""
    return out_root() / "artifacts" / "figures" / STAGE / f"{name}.png"


def write_skipped(profile: str, name: str, seed: int = 0) -> list[Path]:
    """Write every output path of ``name``'s stage, marked ``skipped`` (the profile has 0 steps for it).

    Kept light (no torch, no matplotlib: about a second) because a small profile skips most names.
    """
    import datetime

    from PIL import Image, ImageDraw, ImageFont

    from .provenance import git_revision, write_metrics

    reason = f"not trained in profile {profile!r} (profiles.{profile}.tokenizers.steps.{name} = 0)"
    written = [atomic_write_json(checkpoint_path(name).parent / SKIPPED_MARKER,
                                 {"config": name, "profile": profile, "skipped": True, "reason": reason})]
    prov = {"profile": profile, "seed": seed, "config": name, "git_revision": git_revision(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "computed": "nothing: skipped by lib.tokenizers.write_skipped"}
    written.append(write_metrics(metrics_path(name), {"skipped": True, "reason": reason}, prov))
    written.append(atomic_write_json(loss_path(name), []))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    text = f"{name}: {reason}"
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 16, bottom - top + 16), "white")
    ImageDraw.Draw(image).text((8 - left, 8 - top), text, fill="black", font=font)
    target = figure_path(name)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
    written.append(target)
    # A one-cell nbformat-4 notebook written as JSON (importing nbformat alone costs seconds).
    text = (f"# 02a · tokenizer `{name}`: skipped\n\n{reason}. Nothing was trained or evaluated; "
            "`notebooks/02a_tokenizer.ipynb` runs for the names this profile trains.")
    nb = {"cells": [{"cell_type": "markdown", "id": "skipped", "metadata": {}, "source": text}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    target = executed_notebook_path(name)
    atomic_write_json(target, nb)
    written.append(target)
    return written


def run_stage(notebook: str, profile: str, name: str) -> int:
    """One ``tokenizer@<name>`` stage: papermill ``notebook`` if the profile trains ``name``, else
    :func:`write_skipped`. Returns the exit status."""
    from . import params as lib_params

    params = lib_params.load(profile)
    section = params["tokenizers"]
    if not is_active(section, name):
        return run_skipped(profile, [name])
    target = executed_notebook_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", "--log-output", notebook, str(target),
           "-p", "profile", profile, "-p", "config", name]
    print("+ papermill", " ".join(cmd[3:]), flush=True)
    return subprocess.call(cmd)


def run_skipped(profile: str, names: list[str]) -> int:
    """:func:`write_skipped` for several names at once; a name the profile trains is an error."""
    from . import params as lib_params

    params = lib_params.load(profile)
    trained = [n for n in names if is_active(params["tokenizers"], n)]
    if trained:
        raise AtelierInputError(f"tokenizers {trained} are trained in profile {profile!r}: run "
                                "`python -m lib.tokenizers stage` for them, not `skip`")
    for name in names:
        for path in write_skipped(profile, name, params["seed"]):
            print(f"[tokenizer {name}] skipped in profile {profile}: wrote {path}")
    return 0


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.tokenizers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one tokenizer stage (papermill, or skipped outputs)")
    stage.add_argument("notebook")
    stage.add_argument("--profile", required=True)
    stage.add_argument("--config", required=True)
    skip = sub.add_parser("skip", help="write the 'skipped' outputs of several names the profile does not train, "
                                       "in one process (what `stage` does for each; used by reproduce/test)")
    skip.add_argument("--profile", required=True)
    skip.add_argument("--config", required=True, nargs="+")
    sub.add_parser("list", help="print every tokenizer name with its steps in each profile")
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            return run_stage(args.notebook, args.profile, args.config)
        if args.command == "skip":
            return run_skipped(args.profile, args.config)
        from . import params as lib_params

        loaded = {p: lib_params.load(p)["tokenizers"] for p in lib_params.PROFILES}
        names = all_names(next(iter(loaded.values())))
        print("name".ljust(24) + "".join(p.rjust(10) for p in loaded))
        for n in names:
            print(n.ljust(24) + "".join(str(loaded[p]["steps"].get(n, "-")).rjust(10) for p in loaded))
        return 0
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
