"""Evaluation of the Q-Former: cross-modal retrieval (UniFashion Table 1) and composed image
retrieval on Fashion-IQ (Table 4), on top of :mod:`lib.metrics.retrieval`.

Embedding helpers run the model in batches; the recall functions take embeddings only, so they can
be checked on hand-made numbers. Image-text similarity is UniFashion's max over the image's query
embeddings of the cosine with the text [CLS] embedding (Sec. 3.1.1).

Cross-modal (:func:`cross_modal_recall`): image->text and text->image R@1/5/10 over the whole
gallery (FAME-ViL's "more challenging and practical protocol", Sec. 4.4) and under FashionGen's
random-100-same-category protocol (Sec. 4.3), with the library's tie rule (ties count against the
positive).

Composed (:func:`composed_recall`): Fashion-IQ R@10/R@50 per category with these variants:

- ``"full"``: composed query ``e_cls`` (reference image + modification text) vs gallery images.
  This is Table 4's "UniFashion w/o cap".
- ``"w/ cap"``: gallery scored by image AND generated-caption similarity
  (``sim_image + caption_weight * sim_caption``): Table 4's full "UniFashion" row, which uses "the
  pregenerated candidate library" of captions.
- ``"w/o img"``: composed query vs the gallery's generated-caption embeddings only (Table 4).
- ``"image only"``: the reference image alone (mean of its query embeddings) vs gallery images.
- ``"text only"``: the modification text's [CLS] embedding alone vs gallery images.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib.io import AtelierInputError
from lib.metrics.retrieval import (
    fashioniq_recall,
    fashioniq_summary,
    ranks_of_best_positive,
    recall_at_k,
    sample_same_category_negatives,
)
from lib.retrieval.losses import max_query_similarity
from lib.retrieval.qformer import QFormer

COMPOSED_VARIANTS = ("full", "image only", "text only", "w/ cap", "w/o img")
NEEDS_CAPTIONS = ("w/ cap", "w/o img")


# ------------------------------------------------------------------------------------------------
# embeddings from the model
# ------------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, progress: bool, desc: str):
    if batch_size < 1:
        raise AtelierInputError(f"batch_size must be >= 1, got {batch_size}")
    return tqdm(range(0, n, batch_size), desc=desc, disable=not progress, mininterval=2)


@torch.no_grad()
def embed_images(model: QFormer, image_feats: torch.Tensor, batch_size: int = 256,
                 progress: bool = False) -> torch.Tensor:
    """``[N, Q, e]`` normalised query embeddings of every image (CPU, float32)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.image_embeds(image_feats[i:i + batch_size].to(device).float()).cpu()
                      for i in _batches(len(image_feats), batch_size, progress, "embed images")])


@torch.no_grad()
def embed_texts(model: QFormer, text_tokens: torch.Tensor, text_mask: torch.Tensor, batch_size: int = 256,
                progress: bool = False) -> torch.Tensor:
    """``[M, e]`` text-only [CLS] embeddings (CPU, float32)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.text_embed(text_tokens[i:i + batch_size].to(device).float(),
                                       text_mask[i:i + batch_size].to(device)).cpu()
                      for i in _batches(len(text_tokens), batch_size, progress, "embed texts")])


@torch.no_grad()
def embed_composed(model: QFormer, ref_feats: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                   batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """``[Qn, e]`` composed query embeddings (reference image + modification text, Eq. 9-10)."""
    model.eval()
    device = next(model.parameters()).device
    if len(ref_feats) != len(text_tokens):
        raise AtelierInputError(f"{len(ref_feats)} reference images for {len(text_tokens)} modification texts")
    return torch.cat([model.composed_embed(ref_feats[i:i + batch_size].to(device).float(),
                                           text_tokens[i:i + batch_size].to(device).float(),
                                           text_mask[i:i + batch_size].to(device)).cpu()
                      for i in _batches(len(ref_feats), batch_size, progress, "embed composed")])


@torch.no_grad()
def generate_captions(qformer: QFormer, decoder, image_feats: torch.Tensor, batch_size: int = 256,
                      progress: bool = False, **generate_kwargs) -> list[str]:
    """Captions of every image from the frozen Q-Former's query outputs (greedy unless told)."""
    qformer.eval()
    decoder.eval()
    device = next(qformer.parameters()).device
    out: list[str] = []
    for i in _batches(len(image_feats), batch_size, progress, "generate captions"):
        q = qformer.query_outputs(image_feats[i:i + batch_size].to(device).float())
        out.extend(decoder.generate_text(q, **generate_kwargs))
    return out


def caption_gallery_embeddings(qformer: QFormer, decoder, image_feats: torch.Tensor,
                               encode_texts: Callable[[list[str]], Mapping[str, torch.Tensor]], batch_size: int = 256,
                               progress: bool = False, **generate_kwargs) -> tuple[torch.Tensor, list[str]]:
    """UniFashion's "pregenerated candidate library": captions generated for the gallery images,
    embedded by the text side of the Q-Former. ``encode_texts(list) -> {"tokens", "mask"}`` is the
    frozen text encoder (e.g. ``lib.text.encoder.shared_encoder().encode``). Returns ``([G, e], captions)``."""
    captions = generate_captions(qformer, decoder, image_feats, batch_size, progress, **generate_kwargs)
    enc = encode_texts(captions)
    return embed_texts(qformer, enc["tokens"], enc["mask"], batch_size, progress), captions


# ------------------------------------------------------------------------------------------------
# cross-modal retrieval
# ------------------------------------------------------------------------------------------------
def _similarity_chunks(image_embeds: torch.Tensor, text_embeds: torch.Tensor, image_rows: bool, max_entries: int):
    """Yield ``(start, sim)`` row blocks of the image x text (``image_rows``) or text x image
    similarity, sized so a block holds about ``max_entries`` floats before the max over queries."""
    n, q, _ = image_embeds.shape
    m = text_embeds.shape[0]
    if image_rows:
        step = max(1, max_entries // max(1, q * m))
        for s in range(0, n, step):
            yield s, max_query_similarity(image_embeds[s:s + step], text_embeds)
    else:
        step = max(1, max_entries // max(1, q * n))
        for s in range(0, m, step):
            yield s, max_query_similarity(image_embeds, text_embeds[s:s + step]).T


def _direction(sim_chunks, positive_fn, query_cats, gallery_cats, positives_lists, ks, seed, num_negatives):
    """Full-gallery ranks and random-100 candidate similarities from the same similarity blocks."""
    negs = None
    if query_cats is not None:
        negs = sample_same_category_negatives(query_cats, gallery_cats, positives_lists, num_negatives, seed)
    ranks, best, neg_sims = [], [], []
    for start, sim in sim_chunks:
        rows = torch.arange(start, start + sim.shape[0])
        pos = positive_fn(rows)
        ranks.append(ranks_of_best_positive(sim, pos))
        if negs is not None:
            best.append(sim.masked_fill(~pos, float("-inf")).amax(1))
            neg_sims.append(sim.gather(1, negs[rows]))
    ranks = torch.cat(ranks)
    full = {**{f"R@{int(k)}": float((ranks < int(k)).float().mean()) for k in ks},
            "median_rank": float(ranks.float().median() + 1), "num_queries": int(len(ranks))}
    out = {"full": full}
    if negs is not None:
        # Column 0 holds each query's best positive, the rest its sampled negatives: recall_at_k's
        # tie rule then ranks exactly as recall_random100_same_category does.
        cand = torch.cat([torch.cat(best)[:, None], torch.cat(neg_sims)], 1)
        res = recall_at_k(cand, torch.zeros(len(cand), dtype=torch.long), ks)
        out["random100"] = {**{k: v for k, v in res.items() if k.startswith("R@")}, "num_queries": res["num_queries"],
                            "num_candidates": 1 + num_negatives, "seed": seed,
                            "protocol": f"random-{1 + num_negatives}: positive vs {num_negatives} random "
                                        f"same-category negatives (lib.metrics.retrieval)"}
    return out


def cross_modal_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_image: Any, *,
                       categories: Optional[Sequence] = None, image_groups: Optional[Sequence] = None,
                       ks: Sequence[int] = (1, 5, 10), seed: int = 0, num_negatives: int = 99,
                       max_entries: int = 1 << 25) -> dict:
    """Image->text and text->image Recall@K (UniFashion Table 1).

    ``image_embeds [N, Q, e]``, ``text_embeds [M, e]``; ``text_image [M]``: the image each text
    describes. A retrieved item is correct when it belongs to the query's group: ``image_groups [N]``
    (e.g. FashionGen product ids, whose several poses share captions; default: every image its own
    group). ``categories [N]`` (one per image) adds the random-100-same-category protocol; texts
    inherit their image's category. Similarities are computed in blocks of ~``max_entries`` floats.
    Returns ``{"image_to_text": {"full", "random100"?}, "text_to_image": {...}, "mean_full",
    "mean_random100"?}``; the means average the six R@K values like Table 1's "Mean".
    """
    if image_embeds.dim() != 3 or text_embeds.dim() != 2:
        raise AtelierInputError(f"image_embeds must be [N, Q, e] and text_embeds [M, e], got "
                                f"{tuple(image_embeds.shape)}, {tuple(text_embeds.shape)}")
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    text_image = torch.as_tensor(np.asarray(text_image)).long()
    if text_image.shape != (m,) or (m and (int(text_image.min()) < 0 or int(text_image.max()) >= n)):
        raise AtelierInputError(f"text_image must be [M={m}] image indices in [0, {n})")
    groups = torch.arange(n) if image_groups is None else torch.as_tensor(np.unique(np.asarray(image_groups),
                                                                                   return_inverse=True)[1]).long()
    if groups.shape != (n,):
        raise AtelierInputError(f"image_groups must have one entry per image ({n}), got {tuple(groups.shape)}")
    text_group = groups[text_image]
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()

    i2t_lists = t2i_lists = qc_i = gc_i = None
    if categories is not None:
        cats = np.asarray(categories)
        if len(cats) != n:
            raise AtelierInputError(f"categories must have one entry per image ({n}), got {len(cats)}")
        texts_of = {}
        images_of = {}
        for j, g in enumerate(text_group.tolist()):
            texts_of.setdefault(g, []).append(j)
        for i, g in enumerate(groups.tolist()):
            images_of.setdefault(g, []).append(i)
        empty = [i for i, g in enumerate(groups.tolist()) if g not in texts_of]
        if empty:
            raise AtelierInputError(f"image {empty[0]} has no text in its group: image->text recall is undefined")
        i2t_lists = [texts_of[g] for g in groups.tolist()]
        t2i_lists = [images_of[g] for g in text_group.tolist()]
        qc_i, gc_i = cats, cats[text_image.numpy()]

    i2t = _direction(_similarity_chunks(image_embeds, text_embeds, True, max_entries),
                     lambda rows: groups[rows][:, None] == text_group[None, :],
                     qc_i, gc_i, i2t_lists, ks, seed, num_negatives)
    t2i = _direction(_similarity_chunks(image_embeds, text_embeds, False, max_entries),
                     lambda rows: text_group[rows][:, None] == groups[None, :],
                     gc_i, qc_i, t2i_lists, ks, seed, num_negatives)
    i2t["full"]["num_gallery"], t2i["full"]["num_gallery"] = m, n
    out = {"image_to_text": i2t, "text_to_image": t2i}
    for protocol in ("full", "random100"):
        if protocol in i2t:
            out[f"mean_{protocol}"] = float(np.mean([d[protocol][f"R@{int(k)}"] for d in (i2t, t2i) for k in ks]))
    return out


# ------------------------------------------------------------------------------------------------
# composed retrieval
# ------------------------------------------------------------------------------------------------
def composed_similarity(variant: str, gallery_images: torch.Tensor, *, composed: Optional[torch.Tensor] = None,
                        reference: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                        gallery_captions: Optional[torch.Tensor] = None, caption_weight: float = 1.0) -> torch.Tensor:
    """``[Qn, G]`` scores of one :data:`COMPOSED_VARIANTS` entry (see module docstring).

    ``gallery_images [G, Q, e]``; ``composed [Qn, e]`` (the composed [CLS] embedding);
    ``reference [Qn, Q, e]`` (reference images' query embeddings); ``text [Qn, e]`` (modification
    text alone); ``gallery_captions [G, e]`` (generated captions' embeddings).
    """
    if variant not in COMPOSED_VARIANTS:
        raise AtelierInputError(f"variant must be one of {COMPOSED_VARIANTS}, got {variant!r}")
    needed = {"full": ("composed",), "image only": ("reference",), "text only": ("text",),
              "w/ cap": ("composed", "gallery_captions"), "w/o img": ("composed", "gallery_captions")}[variant]
    given = {"composed": composed, "reference": reference, "text": text, "gallery_captions": gallery_captions}
    missing = [k for k in needed if given[k] is None]
    if missing:
        raise AtelierInputError(f"variant {variant!r} needs {missing} embeddings")
    gallery_images = gallery_images.float()
    if variant == "full":
        return max_query_similarity(gallery_images, composed.float()).T
    if variant == "image only":
        pooled = F.normalize(reference.float().mean(1), dim=-1)
        return max_query_similarity(gallery_images, pooled).T
    if variant == "text only":
        return max_query_similarity(gallery_images, text.float()).T
    caption_sim = composed.float() @ gallery_captions.float().T
    if variant == "w/o img":
        return caption_sim
    return max_query_similarity(gallery_images, composed.float()).T + caption_weight * caption_sim


def composed_recall_from_embeddings(queries: Mapping[str, torch.Tensor], gallery: Mapping[str, torch.Tensor],
                                    target_ids: Sequence, gallery_ids: Sequence,
                                    reference_ids: Optional[Sequence] = None,
                                    variants: Sequence[str] = ("full", "image only", "text only"),
                                    ks: Sequence[int] = (10, 50), exclude_reference: bool = False,
                                    caption_weight: float = 1.0, return_ranks: bool = False) -> dict[str, dict]:
    """Fashion-IQ recall of each variant for one category, from embeddings.

    ``queries``: ``{"composed", "reference", "text"}`` (those the variants need); ``gallery``:
    ``{"images", "captions"?}``. The ranking is :func:`lib.metrics.retrieval.fashioniq_recall`
    itself (full-split ranking by default, the optional reference exclusion, pessimistic ties): it
    scores by a dot product, so each query's row of similarities is passed against an identity
    gallery, whose dot product returns that row. ``return_ranks`` adds each query's target rank
    (``"ranks"``) to every variant's result.
    """
    if "images" not in gallery:
        raise AtelierInputError("gallery needs 'images' ([G, Q, e] query embeddings)")
    if return_ranks and exclude_reference:
        raise AtelierInputError("return_ranks is for the paper's protocol (the full split ranked), not with exclude_reference")
    g = gallery["images"].shape[0]
    identity = torch.eye(g)
    out = {}
    for variant in variants:
        sim = composed_similarity(variant, gallery["images"], composed=queries.get("composed"),
                                  reference=queries.get("reference"), text=queries.get("text"),
                                  gallery_captions=gallery.get("captions"), caption_weight=caption_weight)
        out[variant] = fashioniq_recall(sim, identity, target_ids, gallery_ids, ks, reference_ids=reference_ids,
                                        exclude_reference=exclude_reference, normalize=False)
        if return_ranks:
            # each query's 0-based target rank on the same similarities (ties against it, as in
            # fashioniq_recall), for a bootstrap over the queries
            col = {gid: i for i, gid in enumerate(gallery_ids)}
            positives = torch.zeros(sim.shape, dtype=torch.bool)
            positives[torch.arange(len(target_ids)), torch.tensor([col[t] for t in target_ids])] = True
            out[variant]["ranks"] = ranks_of_best_positive(sim.float(), positives.to(sim.device)).cpu().tolist()
    return out


def composed_recall(model: QFormer, categories: Mapping[str, Mapping[str, Any]],
                    variants: Sequence[str] = ("full", "image only", "text only"), ks: Sequence[int] = (10, 50),
                    exclude_reference: bool = False, caption_weight: float = 1.0, batch_size: int = 256,
                    progress: bool = False, return_ranks: bool = False) -> dict:
    """Fashion-IQ composed retrieval (UniFashion Table 4) per category and averaged.

    ``categories``: ``{"dress" | "shirt" | "toptee": data}``, ``data`` holding
    ``reference_feats [Qn, S, C_f]``, ``text_tokens [Qn, L, 384]``, ``text_mask [Qn, L]``
    (modification texts), ``target_ids``, ``reference_ids``, ``gallery_feats [G, S, C_f]``,
    ``gallery_ids`` and, for ``"w/ cap"`` / ``"w/o img"``, ``gallery_caption_embeds [G, e]``
    (:func:`caption_gallery_embeddings`). Returns ``{"per_category": {cat: {variant: result}},
    "summary": {variant: fashioniq_summary}}``; ``return_ranks`` keeps each query's target rank
    (``per_category[cat][variant]["ranks"]``) for a bootstrap over the queries.
    """
    unknown = [v for v in variants if v not in COMPOSED_VARIANTS]
    if unknown:
        raise AtelierInputError(f"unknown variant(s) {unknown}; known: {COMPOSED_VARIANTS}")
    if not categories:
        raise AtelierInputError("composed_recall: no categories given")
    per_category = {}
    for cat, data in categories.items():
        required = ["reference_feats", "text_tokens", "text_mask", "target_ids", "gallery_feats", "gallery_ids"]
        if any(v in NEEDS_CAPTIONS for v in variants):
            required.append("gallery_caption_embeds")
        missing = [k for k in required if data.get(k) is None]
        if missing:
            raise AtelierInputError(f"category {cat!r}: missing {missing}")
        queries = {}
        if any(v in ("full", "w/ cap", "w/o img") for v in variants):
            queries["composed"] = embed_composed(model, data["reference_feats"], data["text_tokens"], data["text_mask"],
                                                 batch_size, progress)
        if "image only" in variants:
            queries["reference"] = embed_images(model, data["reference_feats"], batch_size, progress)
        if "text only" in variants:
            queries["text"] = embed_texts(model, data["text_tokens"], data["text_mask"], batch_size, progress)
        gallery = {"images": embed_images(model, data["gallery_feats"], batch_size, progress)}
        if data.get("gallery_caption_embeds") is not None:
            gallery["captions"] = torch.as_tensor(data["gallery_caption_embeds"])
        per_category[cat] = composed_recall_from_embeddings(
            queries, gallery, data["target_ids"], data["gallery_ids"], data.get("reference_ids"), variants, ks,
            exclude_reference, caption_weight, return_ranks)
    summary = {v: fashioniq_summary({c: r[v] for c, r in per_category.items()}, ks) for v in variants}
    return {"per_category": per_category, "summary": summary}
