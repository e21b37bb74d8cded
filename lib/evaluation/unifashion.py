"""Evaluation of the UniFashion stages' models, in the paper's table layouts, and their figures.

Used by the stage metrics of :mod:`lib.stages.unifashion` and by notebooks 06 (retrieval) and 07 (captioning):

- cross-modal retrieval, UniFashion Table 1 (:func:`cross_modal`): image->text / text->image R@1/5/10,
  random-100 protocol and full gallery (:func:`lib.retrieval.evaluate.cross_modal_recall`);
- composed retrieval, Table 4 (:func:`composed`), with UniFashion's "pregenerated candidate library"
  of gallery captions (:func:`gallery_captions`, :func:`with_caption_embeddings`);
- captioning, Table 2 (:func:`caption_eval`; pycocoevalcap, Java-less runs report the metrics as
  unavailable) and whether captions name the right attributes (:func:`caption_attribute_accuracy`);
- composed image generation, Table 3 (:func:`composed_generation_inputs`, :func:`generate_from_queries`,
  :func:`composed_generation_rows`): images generated from the composed query, judged against the
  *target* (attribute accuracy, CLIP-score stand-in on the target's caption, FID/KID);
- rows in the paper's columns (values x 100, as printed) and the query / caption / generation figures.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from lib.data.attributes import CATEGORIES, COLOUR_NAMES, PATTERNS
from lib.evaluation import uncertainty
from lib.evaluation.judge_panel import attribute_targets, pooled_text
from lib.figures import labelled_image_rows
from lib.images import to_uint8_chw
from lib.io import AtelierInputError
from lib.metrics.captions import JavaNotFoundError, caption_scores
from lib.metrics.retrieval import ranks_of_best_positive, recall_at_k
from lib.pipelines.sampling import generate, make_scheduler
from lib.retrieval.evaluate import (
    composed_recall,
    composed_similarity,
    cross_modal_recall,
    embed_composed,
    embed_images,
    embed_texts,
    generate_captions,
)
from lib.retrieval.losses import max_query_similarity
from lib.sampling import LinearGuidanceSchedule


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def cross_modal(qformer, cmr: Mapping[str, Any], R: Mapping[str, Any], seed: int = 0) -> dict:
    """UniFashion Table 1 analogue for one Q-Former: image->text / text->image R@1/5/10 over the
    full gallery and under the random-(1 + ``random_negatives``) same-category protocol."""
    img = embed_images(qformer, cmr["image_feats"])
    txt = embed_texts(qformer, cmr["text_tokens"], cmr["text_mask"])
    return cross_modal_recall(img, txt, cmr["text_image"], categories=cmr["categories"], image_groups=cmr["groups"],
                              ks=(1, 5, 10), seed=seed, num_negatives=int(R["random_negatives"]))


def gallery_captions(qformer, decoder, categories: Mapping[str, Mapping[str, Any]], R: Mapping[str, Any],
                     batch_size: int = 256) -> dict[str, list[str]]:
    """UniFashion's "pregenerated candidate library": a caption for every gallery image of every
    category, generated (greedy, with the profile's instruction) from ``qformer``'s query outputs."""
    return {cat: generate_captions(qformer, decoder, d["gallery_feats"], batch_size, instruction=R["instruction"])
            for cat, d in categories.items()}


def encode_distinct(texts: Sequence[str], encode_texts: Callable[[list[str]], Mapping[str, torch.Tensor]]):
    """``(tokens, mask)`` of ``texts`` with every distinct string encoded once (generated captions
    repeat a lot)."""
    distinct = sorted(set(texts))
    enc = encode_texts(distinct)
    where = {t: i for i, t in enumerate(distinct)}
    idx = torch.tensor([where[t] for t in texts], dtype=torch.long)
    return enc["tokens"][idx], enc["mask"][idx]


def with_caption_embeddings(qformer, categories: Mapping[str, dict], captions: Mapping[str, Sequence[str]],
                            encode_texts: Callable[[list[str]], Mapping[str, torch.Tensor]]) -> dict[str, dict]:
    """``categories`` with ``gallery_caption_embeds`` added: the generated gallery captions embedded by
    ``qformer``'s text side (for the ``"w/ cap"`` and ``"w/o img"`` variants)."""
    out = {}
    for cat, data in categories.items():
        tokens, mask = encode_distinct(list(captions[cat]), encode_texts)
        out[cat] = {**data, "gallery_caption_embeds": embed_texts(qformer, tokens, mask)}
    return out


def composed(qformer, categories: Mapping[str, dict], R: Mapping[str, Any],
             variants: Sequence[str] = ("full", "image only", "text only"), exclude_reference: bool = False,
             bootstrap: Mapping[str, int] | None = None) -> dict:
    """UniFashion Table 4 analogue (R@10/R@50 per category) for ``variants``: the full split ranked
    (the paper's Fashion-IQ protocol) or, with ``exclude_reference``, each query's reference removed.

    ``bootstrap``: ``{"resamples", "seed"}`` (params.yaml ``uncertainty``) adds ``"bootstrap":
    {variant: replicates of Avg}`` (:func:`composed_replicates`), so Table 5's "w/ cap" vs "w/o cap"
    comparison, two rankings of the same queries, gets an interval."""
    res = composed_recall(qformer, categories, variants=variants, ks=(10, 50), caption_weight=float(R["caption_weight"]),
                          exclude_reference=exclude_reference, return_ranks=bootstrap is not None)
    if bootstrap is not None:
        res["bootstrap"] = composed_replicates(res["per_category"], bootstrap)
    return res


def composed_replicates(per_category: Mapping[str, Mapping[str, dict]], bootstrap: Mapping[str, int],
                        ks: Sequence[int] = (10, 50)) -> dict[str, list[float]]:
    """``{variant: replicates}`` of :func:`lib.metrics.retrieval.fashioniq_summary`'s ``Avg`` (the
    mean over ks of the category-averaged R@k) with each category's queries resampled with
    replacement (:mod:`lib.evaluation.uncertainty`, one index stream per category, the same for every variant:
    variants are compared on the same resampled queries). Reads and removes the per-query ``ranks``
    of ``per_category[cat][variant]`` (:func:`lib.retrieval.evaluate.composed_recall` with
    ``return_ranks``), so they do not reach the metrics JSON."""
    B, seed = int(bootstrap["resamples"]), int(bootstrap["seed"])
    cats = list(per_category)
    variants = list(per_category[cats[0]]) if cats else []
    ranks = {}
    for cat in cats:
        for v in variants:
            r = per_category[cat][v].pop("ranks", None)
            if r is None:
                raise AtelierInputError(f"composed_replicates: {cat}/{v} has no per-query ranks (composed_recall(..., "
                                        f"return_ranks=True))")
            ranks[cat, v] = np.asarray(r)
    idx = {cat: uncertainty.resample_indices(len(ranks[cat, variants[0]]), B, seed, stream=f"composed/{cat}")
           for cat in cats}
    out = {}
    for v in variants:
        per_k = [np.mean([(ranks[cat, v][idx[cat]] < k).mean(axis=1) for cat in cats], axis=0) for k in ks]
        out[v] = uncertainty.compact(np.mean(per_k, axis=0).tolist())
    return out


def composition_recall(qformer, categories: Mapping[str, Mapping[str, Any]], composition_of: Mapping[str, int],
                       variants: Sequence[str] = ("image only", "text only", "full"),
                       ks: Sequence[int] = (1, 10, 50), bootstrap: Mapping[str, int] | None = None) -> dict:
    """Composed retrieval where any gallery garment of the target's (category, colour, pattern)
    composition counts, not only the target itself (reference excluded, as in Table 4).

    Our triplets' target is one of the ~25 gallery garments of its composition per 1000, and the
    modification text says nothing that singles it out; this recall shows how often the query gets
    the requested attributes right. ``composition_of``: image id -> composition id.
    Returns ``{variant: {"per_category": {cat: {"R@k"}}, "average": {"R@k"}}}``.

    ``bootstrap``: ``{"resamples", "seed"}`` (params.yaml ``uncertainty``): the queries of each category
    are resampled with replacement (:mod:`lib.evaluation.uncertainty`, one index stream per category, the same for
    every variant, so variants are compared on the same resampled queries) and the category average
    recomputed; ``average["bootstrap"] = {"R@k": replicates}``."""
    out = {v: {"per_category": {}} for v in variants}
    hits: dict[str, dict[str, dict[int, np.ndarray]]] = {v: {} for v in variants}
    for cat, d in categories.items():
        gallery = embed_images(qformer, d["gallery_feats"])
        queries = {"composed": embed_composed(qformer, d["reference_feats"], d["text_tokens"], d["text_mask"]),
                   "reference": embed_images(qformer, d["reference_feats"]),
                   "text": embed_texts(qformer, d["text_tokens"], d["text_mask"])}
        comp = np.array([composition_of[g] for g in d["gallery_ids"]])
        positives = torch.from_numpy(comp[None, :] == np.array([composition_of[t] for t in d["target_ids"]])[:, None])
        col = {g: i for i, g in enumerate(d["gallery_ids"])}
        for v in variants:
            sim = composed_similarity(v, gallery, **queries)
            for row, (ref, tgt) in enumerate(zip(d["reference_ids"], d["target_ids"])):
                if ref in col and ref != tgt:
                    sim[row, col[ref]] = float("-inf")
            res = recall_at_k(sim, positives, ks)
            out[v]["per_category"][cat] = {f"R@{k}": res[f"R@{k}"] for k in ks}
            if bootstrap:
                ranks = ranks_of_best_positive(sim, positives).numpy()
                hits[v][cat] = {k: (ranks < k).astype(np.float64) for k in ks}
    for v in variants:
        out[v]["average"] = {f"R@{k}": float(np.mean([r[f"R@{k}"] for r in out[v]["per_category"].values()]))
                             for k in ks}
    if bootstrap:
        B, seed = int(bootstrap["resamples"]), int(bootstrap["seed"])
        idx = {cat: uncertainty.resample_indices(len(d["target_ids"]), B, seed, stream=f"composition/{cat}")
               for cat, d in categories.items()}
        for v in variants:
            out[v]["average"]["bootstrap"] = {
                f"R@{k}": uncertainty.compact(np.mean([hits[v][cat][k][idx[cat]].mean(axis=1) for cat in categories],
                                                      axis=0).tolist()) for k in ks}
    return out


def caption_scores_or_unavailable(references: Mapping[Any, Sequence[str]], candidates: Mapping[Any, str],
                                  metrics: Sequence[str] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")) -> dict:
    """:func:`lib.metrics.captions.caption_scores`; without Java (its tokenizer and METEOR need it)
    every metric is reported as ``None`` with the reason under ``"unavailable"``."""
    try:
        return caption_scores(references, candidates, metrics)
    except JavaNotFoundError as err:
        return {**{m: None for m in metrics}, "unavailable": str(err), "num_samples": len(candidates)}


def caption_eval(qformer, decoder, ws, n: int, metrics: Sequence[str] = ("BLEU-4", "METEOR", "ROUGE-L",
                                                                                     "CIDEr")) -> dict:
    """Captions of the first ``n`` images of ``cmr_split`` (``ws``: a :class:`lib.stages.unifashion.Workspace`) (greedy, the profile's instruction) scored
    against their reference captions (UniFashion Table 2 analogue). Returns ``{"scores", "captions",
    "references", "rows"}``."""
    split = ws.selection["cmr_split"]
    n = min(int(n), int(ws.selection["cmr_images"]))
    names = [str(x) for x in ws.arrays[split]["names"][:n]]
    caps = generate_captions(qformer, decoder, ws.features_of(split, names), instruction=ws.R["instruction"])
    refs = [list(ws.captions[split][i]) for i in range(n)]
    scores = caption_scores_or_unavailable({i: r for i, r in enumerate(refs)}, {i: c for i, c in enumerate(caps)},
                                           metrics)
    return {"scores": scores, "captions": caps, "references": refs, "rows": np.arange(n), "split": split}


def caption_attribute_accuracy(captions: Sequence[str], arrays: Mapping[str, np.ndarray], rows: Sequence[int]) -> dict:
    """How often a generated caption names the image's category, colour and pattern correctly
    (any synonym of :mod:`lib.data.attributes`; a caption that names two colours or two patterns
    is wrong on that attribute). Plain images may say so or not mention a pattern."""
    def found(text, phrases):
        return [i for i, ps in enumerate(phrases) if any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", text)
                                                        for p in ps)]

    cat_phrases = [names for _, names in CATEGORIES]
    pat_phrases = [(name, *adj, *nouns) for name, adj, nouns in PATTERNS]
    hits = {"category": [], "colour": [], "pattern": []}
    for text, r in zip(captions, rows):
        text = text.lower()
        # Word boundaries include "-": "shirt" is not found inside "t-shirt" (nested synonyms such as
        # "boot" in "ankle boot" name the same category).
        cats = found(text, cat_phrases)
        cols = found(text, [(c,) for c in COLOUR_NAMES])
        pats = found(text, pat_phrases)
        hits["category"].append(cats == [int(arrays["category"][r])])
        hits["colour"].append(cols == [int(arrays["colour"][r])])
        truth = int(arrays["pattern"][r])
        hits["pattern"].append(pats == [truth] or (not pats and PATTERNS[truth][0] == "plain"))
    out = {f"acc_{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    out["acc_joint"] = float(np.mean([a and b and c for a, b, c in zip(*hits.values())])) if captions else float("nan")
    out["num_captions"] = len(captions)
    return out


def composed_topk(qformer, data: Mapping[str, Any], k: int = 5, queries: Sequence[int] = (0, 1, 2)) -> list[dict]:
    """Top-``k`` gallery ids of the composed query (variant ``"full"``, reference excluded) for the
    chosen query rows of one category: ``[{"reference", "text", "target", "top": [ids]}]``."""
    q = list(queries)
    comp = embed_composed(qformer, data["reference_feats"][q], data["text_tokens"][q], data["text_mask"][q])
    sim = composed_similarity("full", embed_images(qformer, data["gallery_feats"]), composed=comp)
    col = {g: i for i, g in enumerate(data["gallery_ids"])}
    out = []
    for r, row in zip(q, sim):
        ref = data["reference_ids"][r]
        if ref in col and ref != data["target_ids"][r]:
            row[col[ref]] = float("-inf")
        top = row.topk(min(k, len(row))).indices.tolist()
        out.append({"reference": ref, "text": data["texts"][r], "target": data["target_ids"][r],
                    "top": [data["gallery_ids"][i] for i in top]})
    return out


def framed(images: np.ndarray, mask: Sequence[bool], colour=(40, 180, 60), width: int = 2) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` images with a coloured frame on those where ``mask`` is True."""
    out = np.array(images, copy=True)
    for i, m in enumerate(mask):
        if m:
            out[i, :width], out[i, -width:], out[i, :, :width], out[i, :, -width:] = colour, colour, colour, colour
    return out


# ---------------------------------------------------------------------------------------------
# Table rows and figures in the paper's layout (values x100, as the paper prints them)
# ---------------------------------------------------------------------------------------------
def table1_row(result: Mapping[str, Any], protocol: str) -> dict:
    """UniFashion Table 1 columns of a :func:`cross_modal` result; ``protocol``: ``"random100"``
    or ``"full"``."""
    row = {}
    for short, direction in (("I2T", "image_to_text"), ("T2I", "text_to_image")):
        for k in (1, 5, 10):
            row[f"{short} R@{k}"] = 100 * float(result[direction][protocol][f"R@{k}"])
    row["Mean"] = 100 * float(result[f"mean_{protocol}"])
    return row


def table4_row(summary: Mapping[str, Any]) -> dict:
    """UniFashion Table 4 columns of one :func:`lib.metrics.retrieval.fashioniq_summary`."""
    row = {}
    for cat, name in (("dress", "Dress"), ("shirt", "Shirt"), ("toptee", "Toptee")):
        for k in (10, 50):
            value = summary["per_category"].get(cat, {}).get(f"R@{k}")
            row[f"{name} R@{k}"] = None if value is None else 100 * float(value)
    row["Average R@10"] = 100 * float(summary["average"]["R@10"])
    row["Average R@50"] = 100 * float(summary["average"]["R@50"])
    row["Avg."] = 100 * float(summary["Avg"])
    return row


def composed_figure(ws, examples: Sequence[Mapping[str, Any]], split: str, title: str):
    """One row per composed query: the reference image (grey frame), then the top results, the
    target framed green; the modification text labels the row."""
    rows = []
    for ex in examples:
        ref = framed(ws.images_of(split, [ex["reference"]]), [True], colour=(150, 150, 150))
        top = framed(ws.images_of(split, ex["top"]), [t == ex["target"] for t in ex["top"]])
        label = "\n".join(textwrap.wrap(f"ref + '{ex['text']}'", 34))
        rows.append((label, np.concatenate([ref, top])))
    return labelled_image_rows(rows, title=title, scale=0.75)


def text_to_image_topk(qformer, cmr: Mapping[str, Any], queries: Sequence[int], k: int = 5) -> list[dict]:
    """Top-``k`` images (indices into ``cmr["image_feats"]``) for the chosen caption queries."""
    q = torch.as_tensor(list(queries), dtype=torch.long)
    sim = max_query_similarity(embed_images(qformer, cmr["image_feats"]),
                               embed_texts(qformer, cmr["text_tokens"][q], cmr["text_mask"][q])).T
    groups = np.asarray(cmr["groups"])
    out = []
    for qi, row in zip(q.tolist(), sim):
        top = row.topk(min(k, len(row))).indices.tolist()
        own = groups[int(cmr["text_image"][qi])]
        out.append({"text": cmr["texts"][qi], "top": top, "correct": [bool(groups[i] == own) for i in top]})
    return out


def text_to_image_figure(cmr: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], title: str):
    """One row per caption query: its top images, those of the query's composition framed green."""
    rows = [("\n".join(textwrap.wrap(f"'{ex['text']}'", 34)), framed(cmr["images"][ex["top"]], ex["correct"]))
            for ex in examples]
    return labelled_image_rows(rows, title=title, scale=0.75)


def caption_figure(images: np.ndarray, generated: Sequence[str], references: Sequence[Sequence[str]],
                   title: str, ncol: int = 4):
    """Images with the generated caption (bold) and the first reference caption under each."""
    # plotting only when a figure is drawn (stages that make none skip it)
    import matplotlib.pyplot as plt

    n = len(images)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 3.0 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, gen, refs in zip(axes.ravel(), images, generated, references):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(gen, 28)), fontsize=8, fontweight="bold")
        ax.text(0.5, -0.04, "\n".join(textwrap.wrap(f"ref: {refs[0]}", 30)), transform=ax.transAxes,
                ha="center", va="top", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Composed image generation (UniFashion Table 3 analogue)
# ---------------------------------------------------------------------------------------------
def composed_generation_inputs(ws, n: int) -> dict:
    """The first ``n`` composed queries of ``composed_split``, taken round-robin over the categories
    so every category is represented: reference features, modification text features, and the
    target's row in the split arrays (its attributes and first caption are what the images are
    judged against)."""
    cats = ws.composed_categories()
    split = ws.selection["composed_split"]
    where = {str(name): i for i, name in enumerate(ws.arrays[split]["names"])}
    order = []
    longest = max(len(d["target_ids"]) for d in cats.values())
    for j in range(longest):
        for cat, d in cats.items():
            if j < len(d["target_ids"]) and len(order) < n:
                order.append((cat, j))
    pick = lambda key: [cats[c][key][j] for c, j in order]  # noqa: E731
    stack = lambda key: torch.stack([cats[c][key][j] for c, j in order])  # noqa: E731
    return {"categories": [c for c, _ in order], "texts": pick("texts"), "reference_ids": pick("reference_ids"),
            "target_ids": pick("target_ids"), "reference_feats": stack("reference_feats"),
            "text_tokens": stack("text_tokens"), "text_mask": stack("text_mask"),
            "target_rows": np.array([where[t] for t in pick("target_ids")]),
            "reference_rows": np.array([where[t] for t in pick("reference_ids")]), "split": split}


@torch.no_grad()
def composed_queries(qformer, inputs: Mapping[str, Any], source: str = "composed") -> torch.Tensor:
    """Query outputs ``[n, Q, d]`` that drive the generator: ``composed`` -- ``q_R`` of the reference
    image and modification text (bidirectional mask, Eq. 9); ``reference`` -- the reference image's
    own queries (the text ignored: the "no modification" baseline)."""
    feats = inputs["reference_feats"].float()
    if source == "composed":
        return qformer.composed_outputs(feats, inputs["text_tokens"].float(), inputs["text_mask"])[0]
    if source == "reference":
        return qformer.query_outputs(feats)
    raise AtelierInputError(f"source must be 'composed' or 'reference', got {source!r}")


def generate_from_queries(qgen, dec, q: torch.Tensor, settings: Mapping[str, Any], guidance_scale: float,
                          seed: int = 0, sampler: str = "maskgit", progress: bool = False) -> dict:
    """Images from query outputs through the adapter and generator: MaskGIT (or SMART) decoding with
    Muse's linearly increasing classifier-free guidance (the unconditional branch drops the queries)."""
    steps = make_scheduler(sampler, settings).num_steps
    guidance = LinearGuidanceSchedule(guidance_scale, steps) if guidance_scale > 0 else 0.0
    return generate(qgen.generator, dec, qgen.condition(q), len(q), sampler, settings, guidance=guidance, seed=seed,
                    progress=progress)


def composed_generation_rows(panel, ws, inputs: Mapping[str, Any], images: Mapping[str, torch.Tensor],
                             fid: bool = True) -> list[dict]:
    """One row per image set (name -> float images ``[n,3,H,W]`` in [-1, 1], aligned with ``inputs``):
    attribute accuracy against the *target's* category / colour / pattern, CLIP-score stand-in
    against the target's first caption, classifier score, FID / KID against the real test images."""
    split = inputs["split"]
    arrays = ws.arrays[split]
    targets = attribute_targets(arrays, inputs["target_rows"])
    captions = [ws.captions[split][int(r)][0] for r in inputs["target_rows"]]
    text = pooled_text(captions)
    rows = []
    for name, imgs in images.items():
        sc = panel.score(imgs, test_images_u8=arrays["images"], targets=targets, pooled_text=text, fid=fid)
        rows.append({"method": name, **{k: v for k, v in sc.items() if k != "fid_provenance"},
                     "fid_provenance": sc.get("fid_provenance")})
    return rows


def composed_generation_figure(ws, inputs: Mapping[str, Any], images: Mapping[str, torch.Tensor],
                               picks: Sequence[int], title: str):
    """One row per query: reference, target, then each generated set's image; the modification text
    labels the row."""
    split = inputs["split"]
    rows = []
    for i in picks:
        ref = framed(ws.images_of(split, [inputs["reference_ids"][i]]), [True], colour=(150, 150, 150))
        tgt = framed(ws.images_of(split, [inputs["target_ids"][i]]), [True])
        gen = [to_uint8_chw(imgs[i:i + 1]).permute(0, 2, 3, 1).numpy() for imgs in images.values()]
        label = "\n".join(textwrap.wrap(f"'{inputs['texts'][i]}'", 34))
        rows.append((label, np.concatenate([ref, tgt, *gen])))
    return labelled_image_rows(rows, title=title, scale=0.75)


STAND_INS = ("FashionGen -> colourised Fashion-MNIST images with templated captions (lib/data/build.py); "
             "Fashion-IQ -> our Fashion-IQ-format triplets (dress = Dress, shirt = Shirt, toptee = T-shirt/top; "
             "same file format and R@10/R@50 protocol); EVA-ViT-g -> frozen ImageNet EfficientNet-Lite0 feature maps; "
             "BLIP-2's BERT-initialised Q-Former -> a small Q-Former trained from scratch on frozen all-MiniLM-L6-v2 "
             "token features; LLaVA/Vicuna LLM -> a small caption decoder trained from scratch; "
             "Stable Diffusion v1.4 -> our Muse-style masked token generator (text-to-image model `generation.models`, "
             "fine-tuned from Q-Former queries through a linear adapter) on 32x32 VQ tokens; "
             "phase 2 follows Sec. 4.1 (only the Q-Former is tuned; the caption decoder, the generator and both "
             "adapters stay frozen), where Sec. 3.2.2 also tunes the task adapters and the diffusion model "
             "(the paper says both)")
