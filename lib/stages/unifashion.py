"""UniFashion's retrieval and captioning side as pipeline stages: settings, data, the DVC stage driver.

UniFashion (Zhao et al., 2024) trains in two phases (Sec. 3.1, 3.2, 4.1); each step here is one
DVC stage (``python -m lib.stages.unifashion <phase> --profile P``), built on :mod:`lib.retrieval`:

- ``features``: frozen EfficientNet-Lite0 feature maps of the images the later phases use
  (:mod:`lib.retrieval.features`; the EVA-ViT-g stand-in) and frozen MiniLM token features of the
  Fashion-IQ queries ("<caption 1> and <caption 2>", ``modification_max_length`` tokens). Caption
  token features come from the ``text_features`` stage (``artifacts/text``, :func:`lib.stages.generator.text_table`).
- ``phase1``: phase 1, cross-modal pre-training of the Q-Former with ITC + ITM (Eq. 3-5).
- ``captioner``: phase 1, the caption decoder (the LLM's stand-in) with the Q-Former frozen (Eq. 6),
  instruction-tuned with a Table 7 prompt.
- ``generator``: phase 1, the generator's adapter (Eq. 7) with the Q-Former frozen: the trained
  Muse-style text-to-image model (``generation.models``) fine-tuned to generate an image's tokens
  from its own query outputs (:mod:`lib.retrieval.query_generation`; the diffusion model's stand-in).
- ``phase2``: phase 2, composed fine-tuning of the Q-Former from the phase-1 weights with the
  decoder and generator frozen: Eq. 10 plus Eq. 11's caption loss through the frozen decoder plus
  Eq. 12's target-image loss through the frozen generator (L_stage2, Eq. 13: Table 5's
  "Base+LLM+diff."); optionally also Eq. 10 alone (Table 5's "Base").

Data: the caption dataset of :mod:`lib.data.build` (colourised Fashion-MNIST standing in for
FashionGen) and its Fashion-IQ-format triplets for dress / shirt / toptee (standing in for
Fashion-IQ), read through the real Fashion-IQ loader :class:`lib.data.fashioniq.FashionIQ`;
:func:`real_fashioniq_inputs` runs the same composed evaluation on a real Fashion-IQ root.

Settings: ``params.yaml`` section ``retrieval`` (shared) merged with ``profiles.<p>.retrieval``
(per profile: steps per phase, data and evaluation sizes); :func:`settings` validates them. The
environment variable ``ATELIER_PARAMS`` (tests only) points :func:`load_params` at another params file.

Image-caption positives: our templated captions describe an image's (category, colour, pattern)
composition completely, so images of one composition share their captions in training
(:func:`composition_caption_ids`) and count as matches in evaluation, like FashionGen's several views
of one product.

Outputs (below :func:`lib.store.out_root`): ``artifacts/unifashion/<phase>/...`` (features,
checkpoints) and ``results/06_unifashion/<phase>/{metrics.json,loss.json}``. Evaluation in the
paper's table layouts lives in :mod:`lib.evaluation.unifashion`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

import lib.config as lib_params
import lib.store.tokenizers as tokenizer_store
from lib.config import load_params
from lib.data.caption_dataset import load_split
from lib.evaluation.unifashion import STAND_INS, caption_attribute_accuracy, caption_eval, composed, cross_modal
from lib.generation import TextFeatureTable, masked_token_accuracy
from lib.io import AtelierInputError, atomic_write_json, load_checkpoint, save_checkpoint, sha256_file
from lib.pipelines.unifashion import (
    Workspace,
    check_ids_in_split,
    build_decoder,
    build_qformer,
    build_vocab,
    evaluable_triplets,
    fashioniq_split,
    feature_extractor,
    generation_backbone,
    load_trained,
    modification_encoder,
    query_texts,
)
from lib.provenance import run_info, write_metrics
from lib.retrieval.features import cached_features
from lib.retrieval.query_generation import QueryAdapter, QueryGenerator, train_query_generator
from lib.retrieval.train import train_phase1_captioner, train_phase1_qformer, train_phase2_composed
from lib.stages import tokens as TOK
from lib.store import caption_root, out_root
from lib.store.unifashion import (
    PHASES,
    decoder_path,
    generator_path,
    image_features_path,
    loss_path,
    metrics_path,
    modification_table_path,
    qformer_path,
    selection_path,
    train_tokens_path,
)
from lib.training import write_loss_curve

#: What stands in for the paper's data and models (said once, used by both notebooks' tables).
# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
#: the ``retrieval`` section's schema and checker live in lib.config (torch-free, issue 16)
settings = lib_params.unifashion_settings


def warmup_steps(R: Mapping[str, Any], steps: int) -> int:
    return max(1, int(round(float(R["warmup_fraction"]) * steps)))


# ---------------------------------------------------------------------------------------------
# Paths (nothing is created here: writers create parents atomically)
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Data: which images, Fashion-IQ queries
# ---------------------------------------------------------------------------------------------
def select_train_images(names: Sequence[str], triplets: Mapping[str, Sequence], train_images: int,
                        triplets_per_category: int, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Rows of the train split to compute features of, and the number of triplets kept per category.

    The first ``triplets_per_category`` triplets of every category (reference and target images)
    come first, so phase 2 has them; random other train images (any category, for phase 1) fill
    up to ``train_images``. Returns ``(sorted rows, {category: triplets kept})``.
    """
    row = {str(n): i for i, n in enumerate(names)}
    needed: set[int] = set()
    kept = {}
    for cat, trips in sorted(triplets.items()):
        use = list(trips)[:triplets_per_category]
        kept[cat] = len(use)
        for t in use:
            for image_id in (t.candidate, t.target):
                if image_id not in row:
                    raise AtelierInputError(f"triplet image {image_id!r} ({cat}) is not in the train split")
                needed.add(row[image_id])
    if len(needed) > train_images:
        raise AtelierInputError(
            f"unifashion.train_images = {train_images} is smaller than the {len(needed)} images of the "
            f"{triplets_per_category} triplets per category (unifashion.train_triplets_per_category): raise it")
    rest = np.setdiff1d(np.arange(len(names)), np.fromiter(needed, dtype=np.int64, count=len(needed)))
    extra = np.random.default_rng(seed).choice(rest, size=min(train_images - len(needed), len(rest)), replace=False)
    return np.sort(np.concatenate([np.fromiter(needed, dtype=np.int64, count=len(needed)), extra])), kept


# ---------------------------------------------------------------------------------------------
# The features stage and what the later stages read back
# ---------------------------------------------------------------------------------------------
def run_features(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_features`` stage: choose the images, cache their frozen features and the
    query texts' MiniLM token features, write ``selection.json`` and the stage metrics."""
    R, seed = settings(P), int(P["seed"])
    root = caption_root()
    t0 = time.perf_counter()
    train = load_split(root, "train")
    fiq_train = fashioniq_split(root / "fashioniq", "train")
    train_rows, kept = select_train_images(train["names"], {c: f.triplets for c, f in fiq_train.items()},
                                           R["train_images"], R["train_triplets_per_category"], seed)
    eval_rows: dict[str, set[int]] = {}
    arrays = {"train": train}
    for split in {R["cmr_split"], R["composed_split"]}:
        arrays[split] = load_split(root, split)
    cmr = arrays[R["cmr_split"]]
    n_cmr = min(int(R["cmr_images"]), len(cmr["names"]))
    eval_rows.setdefault(R["cmr_split"], set()).update(range(n_cmr))
    fiq_eval = fashioniq_split(root / "fashioniq", R["composed_split"])
    row_of = {str(n): i for i, n in enumerate(arrays[R["composed_split"]]["names"])}
    texts = set()
    for cat, fiq in fiq_eval.items():
        trips = evaluable_triplets(fiq, R["composed_queries"])
        ids = set(fiq.gallery) | {t.candidate for t in trips} | {t.target for t in trips}
        check_ids_in_split(fiq, ids, row_of, R["composed_split"], root)
        eval_rows.setdefault(R["composed_split"], set()).update(row_of[i] for i in ids)
        texts.update(query_texts(fiq, trips))
    for cat, fiq in fiq_train.items():
        texts.update(query_texts(fiq, fiq.triplets[:kept[cat]]))
    rows = {"train": train_rows, **{s: np.array(sorted(r), dtype=np.int64) for s, r in eval_rows.items()}}
    t_select = time.perf_counter() - t0

    extractor = feature_extractor(R)
    t0 = time.perf_counter()
    counts = {}
    for split, r in rows.items():
        feats = cached_features(arrays[split]["images"][r], image_features_path(split), extractor, progress=progress)
        counts[split] = int(len(r))
    t_images = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = TextFeatureTable.build(sorted(texts), modification_table_path(), encoder=modification_encoder(R),
                                   progress=progress)
    t_texts = time.perf_counter() - t0
    selection = {"rows": {s: r.tolist() for s, r in rows.items()},
                 "names": {s: [str(n) for n in arrays[s]["names"][r]] for s, r in rows.items()},
                 "train_triplets_per_category": kept, "cmr_split": R["cmr_split"], "cmr_images": n_cmr,
                 "composed_split": R["composed_split"], "composed_queries": R["composed_queries"]}
    atomic_write_json(selection_path(), selection)
    metrics = {"images": counts, "feature_shape": list(feats.shape[1:]), "modification_texts": len(table),
               "modification_max_length": table.max_length, "train_triplets": kept, "cmr_images": n_cmr,
               "seconds": {"select": round(t_select, 1), "image_features": round(t_images, 1),
                           "modification_texts": round(t_texts, 1)},
               "images_per_s": round(sum(counts.values()) / max(t_images, 1e-9), 1)}
    prov = run_info(P["profile"], seed, phase="features", extractor=extractor.arch,
                    text_encoder="frozen all-MiniLM-L6-v2 token features (lib.text.encoder)",
                    settings={k: R[k] for k in ("image_size", "out_index", "modification_max_length", "cmr_split",
                                                "composed_split", "train_images", "train_triplets_per_category",
                                                "cmr_images", "composed_queries")})
    write_metrics(metrics_path("features"), metrics, prov)
    return metrics


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - tokens.shape[1]
    if extra < 0:
        raise AtelierInputError(f"text features of length {tokens.shape[1]} exceed {length}")
    return (torch.nn.functional.pad(tokens, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra), value=False))


# ---------------------------------------------------------------------------------------------
# The training stages
# ---------------------------------------------------------------------------------------------
def _mean_last(history: list[dict], key: str, n: int = 20) -> Optional[float]:
    vals = [h[key] for h in history[-n:] if key in h]
    return float(np.mean(vals)) if vals else None


def _prov(P: Mapping[str, Any], phase: str, R: Mapping[str, Any], **extra: Any) -> dict:
    ckpts = {}
    for name, path in (("qformer_phase1", qformer_path("phase1")), ("decoder", decoder_path()),
                       ("query_generator", generator_path()),
                       ("qformer_phase2", qformer_path("phase2")), ("qformer_phase2_base", qformer_path("phase2", True))):
        if path.is_file():
            ckpts[name] = {"path": str(path.relative_to(out_root())), "sha256": sha256_file(path)}
    return run_info(P["profile"], int(P["seed"]), phase=phase, settings=R, checkpoints=ckpts,
                    stand_ins=STAND_INS, **extra)


def run_phase1(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_phase1`` stage: the Q-Former with ITC + ITM (Eq. 5) on the selected train
    images and their captions; metrics include the Table 1 protocol on ``cmr_split``."""
    R = settings(P)
    ws = Workspace.load(P)
    torch.manual_seed(ws.seed)
    feats = ws.feats["train"]
    model = build_qformer(R, feats)
    steps = int(R["steps"]["phase1"])
    t0 = time.perf_counter()
    history = train_phase1_qformer(model, feats, ws.train_caption_ids(), ws.caption_table.tokens,
                                   ws.caption_table.mask, qformer_path("phase1"), steps=steps,
                                   batch_size=R["batch_size"], lr=R["lr"]["phase1"], warmup=warmup_steps(R, steps),
                                   seed=ws.seed, progress=progress)
    seconds = time.perf_counter() - t0
    write_loss_curve(history, loss_path("phase1"), every=max(1, len(history) // 300))
    cmr = cross_modal(model, ws.cmr_inputs(), R, ws.seed)
    metrics = {"steps": steps, "seconds": round(seconds, 1), "train_images": int(len(feats)),
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "final": {k: _mean_last(history, k) for k in ("loss", "itc", "itm", "itm_acc", "temperature")},
               "cross_modal": cmr}
    write_metrics(metrics_path("phase1"), metrics, _prov(P, "phase1", R, qformer=model.arch,
                                                          objective="Eq. 5: L_ITC + L_ITM"))
    return metrics


def run_captioner(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_captioner`` stage: the caption decoder and its adapter on the frozen phase-1
    Q-Former's query outputs (Eq. 6), with the profile's Table 7 instruction."""
    R = settings(P)
    ws = Workspace.load(P)
    torch.manual_seed(ws.seed)
    qformer = load_trained("phase1")
    cap_ids = ws.train_caption_ids()
    vocab = build_vocab(ws.caption_texts(torch.unique(cap_ids)))
    decoder = build_decoder(R, vocab, qformer)
    caption_tokens = vocab.encode_batch(ws.caption_table.texts, R["decoder"]["max_len"])
    steps = int(R["steps"]["captioner"])
    t0 = time.perf_counter()
    history = train_phase1_captioner(qformer, decoder, ws.feats["train"], cap_ids, caption_tokens, decoder_path(),
                                     steps=steps, batch_size=R["batch_size"], lr=R["lr"]["captioner"],
                                     warmup=warmup_steps(R, steps), instruction=R["instruction"], seed=ws.seed,
                                     progress=progress)
    seconds = time.perf_counter() - t0
    write_loss_curve(history, loss_path("captioner"), every=max(1, len(history) // 300))
    n = min(int(R["caption_eval_n"]), 200)
    ev = caption_eval(qformer, decoder, ws, n, metrics=("BLEU-4",))
    acc = caption_attribute_accuracy(ev["captions"], ws.arrays[ev["split"]], ev["rows"])
    metrics = {"steps": steps, "seconds": round(seconds, 1), "vocabulary": len(vocab),
               "parameters": int(sum(p.numel() for p in decoder.parameters())),
               "instruction": R["instruction"], "final_loss": _mean_last(history, "loss"),
               "heldout": {"num_images": int(len(ev["captions"])), "BLEU-4": ev["scores"].get("BLEU-4"),
                           **acc, "examples": [{"generated": c, "references": r}
                                               for c, r in zip(ev["captions"][:5], ev["references"][:5])]}}
    write_metrics(metrics_path("captioner"), metrics, _prov(P, "captioner", R, decoder=decoder.hparams,
                                                             objective="Eq. 6: L_ITG, Q-Former frozen"))
    return metrics


def run_generator(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_generator`` stage: the generator adapter (Eq. 7) on the frozen phase-1
    Q-Former, starting from the trained text-to-image model; caches the train images' tokens for
    phase 2's Eq. 12. Metrics: held-out masked-token accuracy from each image's own queries, beside
    the same model with the null condition (what the queries add)."""
    R = settings(P)
    G = R["generator"]
    ws = Workspace.load(P)
    torch.manual_seed(ws.seed)
    qformer = load_trained("phase1")
    model, _, _ = generation_backbone(P, R)
    t0 = time.perf_counter()
    cache = backbone_tokens(P, R)
    tokens = split_tokens(cache, ws, "train")[torch.from_numpy(np.asarray(ws.train_rows))]
    save_checkpoint(train_tokens_path(), {"tokens": tokens}, {"arch": {"name": "token_grids", "rows": "selection.json rows.train, in order",
                                                                      "tokenizer": P["generation"]["models"][G["model"]]["tokenizer"]}})
    t_tok = time.perf_counter() - t0
    qgen = QueryGenerator(QueryAdapter(qformer.dim, model.config.text_dim), model)
    steps = int(R["steps"]["generator"])
    t0 = time.perf_counter()
    history = train_query_generator(qformer, qgen, ws.feats["train"], tokens, generator_path(), steps=steps,
                                    batch_size=R["batch_size"], lr=G["lr"], warmup=warmup_steps(R, steps),
                                    finetune_generator=bool(G["finetune"]), cond_drop=G["cond_drop"],
                                    label_smoothing=float(P["generation"]["label_smoothing"]), seed=ws.seed,
                                    progress=progress)
    seconds = time.perf_counter() - t0
    write_loss_curve(history, loss_path("generator"), every=max(1, len(history) // 300))
    heldout = query_generation_heldout(qformer, qgen, cache, ws, n=min(500, int(R["cmr_images"])), seed=ws.seed)
    metrics = {"steps": steps, "seconds": round(seconds, 1), "token_cache_load_seconds": round(t_tok, 1),
               "token_cache": f"artifacts/tokens/{cache.name}/{cache.path.name}",
               "train_images": int(len(tokens)), "backbone": G["model"], "finetune_generator": bool(G["finetune"]),
               "parameters": {"adapter": int(sum(p.numel() for p in qgen.adapter.parameters())),
                              "generator": int(sum(p.numel() for p in qgen.generator.parameters()))},
               "final": {k: _mean_last(history, k) for k in ("loss", "acc")}, "heldout": heldout}
    write_metrics(metrics_path("generator"), metrics,
                  _prov(P, "generator", R, objective="Eq. 7 with masked tokens: L_q2I, Q-Former frozen",
                        backbone_checkpoint=str(Path("artifacts/generators") / G["model"])))
    return metrics


def backbone_tokens(P: Mapping[str, Any], R: Mapping[str, Any]):
    """The token cache (:mod:`lib.stages.tokens`, stage ``tokens@<tokenizer>``) of the generator backbone's
    tokenizer: this stage reads tokens, it does not tokenize images itself (issue 15)."""
    name = P["generation"]["models"][R["generator"]["model"]]["tokenizer"]
    return TOK.load(name, tokenizer_checkpoint=tokenizer_store.checkpoint_path(name))


def split_tokens(cache, ws: "Workspace", split: str) -> torch.Tensor:
    """Every image's token grid of ``split``, row-aligned with ``ws.arrays[split]`` (checked)."""
    tokens = cache[split]
    if len(tokens) != len(ws.arrays[split]["images"]):
        raise AtelierInputError(f"{cache.path}: {len(tokens)} {split} token grids for {len(ws.arrays[split]['images'])} "
                                f"{split} images; run `dvc repro tokens@{cache.name}` again")
    return tokens


@torch.no_grad()
def query_generation_heldout(qformer, qgen, cache, ws: Workspace, n: int, seed: int, rate: float = 0.5) -> dict:
    """Masked-token accuracy (mask rate ``rate``) of the first ``n`` ``cmr_split`` images' tokens
    (from the token ``cache``) generated from their own query outputs, and from the null condition
    (queries dropped)."""
    split = ws.selection["cmr_split"]
    names = [str(x) for x in ws.arrays[split]["names"][:n]]
    tokens = split_tokens(cache, ws, split)[:n]
    q = qformer.query_outputs(ws.features_of(split, names).float())
    cfg = qgen.config
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(seed)) < rate
    inputs = torch.where(mask, cfg.mask_id, tokens)
    out = {"num_images": len(names), "split": split, "mask_rate": rate}
    for name, drop in (("acc_from_queries", torch.zeros(len(names), dtype=torch.bool)),
                       ("acc_null_condition", torch.ones(len(names), dtype=torch.bool))):
        out[name] = float(masked_token_accuracy(qgen.generator(inputs, qgen.condition(q, drop)), tokens, mask))
    return out


def phase2_data(ws: Workspace, vocab) -> dict:
    """One text table for phase 2: the selected train images' captions (padded to the query texts'
    length) then the query texts, with caption rows, query rows and word ids of every row."""
    cap_ids = ws.train_caption_ids()
    uniq, inverse = torch.unique(cap_ids, return_inverse=True)
    length = ws.modification_table.max_length
    cap_tok, cap_mask = _pad_tokens(ws.caption_table.tokens[uniq], ws.caption_table.mask[uniq], length)
    trips = ws.train_triplets()
    mod_rows = torch.unique(trips["text_rows"])
    mod_local = torch.searchsorted(mod_rows, trips["text_rows"])
    tokens = torch.cat([cap_tok, ws.modification_table.tokens[mod_rows]])
    mask = torch.cat([cap_mask, ws.modification_table.mask[mod_rows]])
    texts = ws.caption_texts(uniq) + [ws.modification_table.texts[int(i)] for i in mod_rows]
    return {"text_tokens": tokens, "text_mask": mask, "caption_ids": inverse.view(cap_ids.shape),
            "reference": trips["reference"], "target": trips["target"], "modification_ids": len(uniq) + mod_local,
            "caption_tokens": vocab.encode_batch(texts, ws.R["decoder"]["max_len"]), "num_triplets": len(mod_local)}


def run_phase2(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_phase2`` stage: from the phase-1 weights, the Q-Former tuned on the train
    triplets with Eq. 10 + ``itg_weight`` x Eq. 11 through the frozen caption decoder +
    ``generation_weight`` x Eq. 12 through the frozen query generator (Eq. 13); with
    ``steps.phase2_base`` > 0 also Eq. 10 alone (Table 5's base). Metrics: the Table 4 protocol."""
    R = settings(P)
    ws = Workspace.load(P)
    decoder = load_trained("captioner")
    qgen = load_trained("generator")
    target_tokens = _load_train_tokens(len(ws.feats["train"]))
    data = phase2_data(ws, decoder.vocab)
    cats = ws.composed_categories()
    common = dict(batch_size=R["batch_size"], lr=R["lr"]["phase2"], loss_weights=tuple(R["loss_weights"]),
                  seed=ws.seed, progress=progress)
    args = (ws.feats["train"], data["reference"], data["target"], data["modification_ids"], data["caption_ids"],
            data["text_tokens"], data["text_mask"])
    metrics: dict[str, Any] = {"num_triplets": data["num_triplets"], "train_images": int(len(ws.feats["train"]))}
    runs = [("full", False, int(R["steps"]["phase2"]), float(R["itg_weight"]), float(R["generation_weight"])),
            ("base", True, int(R["steps"]["phase2_base"]), 0.0, 0.0)]
    for name, base, steps, itg, gw in runs:
        if steps == 0:
            metrics[name] = {"skipped": True, "reason": f"profiles.{P['profile']}.unifashion.steps.phase2_base = 0"}
            atomic_write_json(loss_path("phase2", "base"), [])  # a declared DVC plot: present even when skipped
            continue
        torch.manual_seed(ws.seed)
        model = load_trained("phase1")
        t0 = time.perf_counter()
        kw = dict(decoder=decoder, caption_tokens=data["caption_tokens"], itg_weight=itg,
                  instruction=R["instruction"]) if itg > 0 else {}
        if gw > 0:
            kw.update(query_generator=qgen, target_tokens=target_tokens, generation_weight=gw)
        history = train_phase2_composed(model, *args, qformer_path("phase2", base), steps=steps,
                                        warmup=warmup_steps(R, steps), **common, **kw)
        seconds = time.perf_counter() - t0
        write_loss_curve(history, loss_path("phase2", "base" if base else ""), every=max(1, len(history) // 300))
        res = composed(model, cats, R)
        metrics[name] = {"steps": steps, "seconds": round(seconds, 1), "itg_weight": itg, "generation_weight": gw,
                         "final": {k: _mean_last(history, k) for k in ("loss", "itc_target", "itc_caption", "itm",
                                                                        "itm_acc", "itg", "q2i", "q2i_acc")},
                         "composed_summary": res["summary"]}
    write_metrics(metrics_path("phase2"), metrics,
                  _prov(P, "phase2", R, objective="Eq. 13: Eq. 10 + itg_weight x Eq. 11 (frozen decoder) + "
                                                  "generation_weight x Eq. 12 (frozen query generator)"))
    return metrics


def _load_train_tokens(n: int) -> torch.Tensor:
    path = train_tokens_path()
    if not path.is_file():
        raise AtelierInputError(f"{path}: missing; run the unifashion_generator stage first")
    tokens = load_checkpoint(path)[0]["tokens"]
    if len(tokens) != n:
        raise AtelierInputError(f"{path}: {len(tokens)} token grids for {n} selected train images; rerun the "
                                f"unifashion_generator stage")
    return tokens


RUNNERS = {"features": run_features, "phase1": run_phase1, "captioner": run_captioner, "generator": run_generator,
           "phase2": run_phase2}


def run(phase: str, profile: str, params_path: str | Path | None = None, progress: bool = True) -> dict:
    """One stage (``phase`` in :data:`PHASES`) for ``profile``."""
    if phase not in RUNNERS:
        raise AtelierInputError(f"phase must be one of {PHASES}, got {phase!r}")
    P = load_params(profile, params_path)
    t0 = time.perf_counter()
    out = RUNNERS[phase](P, progress=progress)
    print(f"[unifashion {phase}] profile {profile}: {time.perf_counter() - t0:.0f} s -> {metrics_path(phase)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.stages.unifashion", description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--params", default=None, help="another params file (default: $ATELIER_PARAMS or params.yaml)")
    args = parser.parse_args(argv)
    try:
        run(args.phase, args.profile, args.params)
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
