"""Retrieval metrics: Recall@K, FashionGen's random-100 protocol, Fashion-IQ's R@10/R@50.

Recall@K here is the fraction of queries whose (best) positive is ranked within the top K, the
definition used by the fashion retrieval literature (UniFashion, Sec. 4.3: "the percentage of
queries whose true target ranked within the top K candidates"). Values are fractions in [0, 1];
tables print them x100.

Ties are broken against the positive: a negative scoring exactly as high as the best positive is
ranked before it. ``argsort``-based code breaks ties arbitrarily (by index), which can turn a
degenerate model (e.g. constant similarities) into a perfect score; the pessimistic rule makes such
a model score 0 and is deterministic.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from lib.io import AtelierInputError


def _check_sim(sim: Any) -> torch.Tensor:
    sim = torch.as_tensor(sim)
    if sim.dim() != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise AtelierInputError(f"similarity must be a non-empty [Q, G] matrix, got shape {tuple(sim.shape)}")
    if torch.isnan(sim).any():
        raise AtelierInputError("similarity contains NaN")
    return sim.float()


def _positive_mask(positives: Any, q: int, g: int, gallery_ids: Sequence | None) -> torch.Tensor:
    """``[Q, G]`` bool mask from an index tensor, a bool mask, or per-query sets/lists."""
    if torch.is_tensor(positives) and positives.dtype == torch.bool:
        if tuple(positives.shape) != (q, g):
            raise AtelierInputError(f"positives mask has shape {tuple(positives.shape)}, expected {(q, g)}")
        return positives.cpu()
    lookup = None
    if gallery_ids is not None:
        lookup = {gid: col for col, gid in enumerate(gallery_ids)}
        if len(lookup) != len(gallery_ids):
            raise AtelierInputError("gallery_ids contain duplicates")
        if len(gallery_ids) != g:
            raise AtelierInputError(f"{len(gallery_ids)} gallery_ids for {g} gallery columns")
    if torch.is_tensor(positives) or isinstance(positives, np.ndarray):
        positives = torch.as_tensor(positives)
        if positives.dim() != 1:
            raise AtelierInputError(f"positives index tensor must be 1-D [Q], got shape {tuple(positives.shape)}")
        positives = [[int(p)] for p in positives.tolist()]
    if len(positives) != q:
        raise AtelierInputError(f"{len(positives)} positive entries for {q} queries")
    mask = torch.zeros(q, g, dtype=torch.bool)
    for row, pos in enumerate(positives):
        items = [pos] if isinstance(pos, (int, np.integer, str)) else list(pos)
        if not items:
            raise AtelierInputError(f"query {row} has no positive: Recall@K is undefined for it")
        for item in items:
            if lookup is None and not isinstance(item, (int, np.integer)):
                raise AtelierInputError(f"query {row}: positive {item!r} is not a column index; pass gallery_ids")
            col = lookup.get(item) if lookup is not None else item
            if col is None or not (0 <= int(col) < g):
                raise AtelierInputError(f"query {row}: positive {item!r} is not in the gallery")
            mask[row, int(col)] = True
    return mask


def ranks_of_best_positive(sim: torch.Tensor, pos_mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each query's best-scoring positive; ties count against it."""
    ranks = []
    for s, m in zip(sim.split(chunk), pos_mask.split(chunk)):
        best = s.masked_fill(~m, float("-inf")).max(dim=1, keepdim=True).values
        ranks.append(((s >= best) & ~m).sum(dim=1))
    return torch.cat(ranks)


def _recalls(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    return {f"R@{int(k)}": float((ranks < int(k)).float().mean()) for k in ks}


def recall_at_k(sim: Any, positives: Any, ks: Sequence[int] = (1, 5, 10),
                gallery_ids: Sequence | None = None) -> dict[str, Any]:
    """Recall@K for a ``[Q, G]`` similarity matrix (higher = more similar).

    ``positives``: an index tensor ``[Q]`` (one positive column per query), a bool mask ``[Q, G]``,
    or per query a set/list of positives; with ``gallery_ids`` those are gallery ids, otherwise
    column indices. A query counts as a hit at K when any of its positives is in the top K.
    Returns ``{"R@k": fraction, ..., "median_rank": 1-based, "num_queries", "num_gallery"}``.
    """
    sim = _check_sim(sim)
    q, g = sim.shape
    ranks = ranks_of_best_positive(sim, _positive_mask(positives, q, g, gallery_ids).to(sim.device))
    return {**_recalls(ranks, ks), "median_rank": float(ranks.float().median() + 1), "num_queries": int(q),
            "num_gallery": int(g)}


# --------------------------------------------------------------------------------------------
# FashionGen random-100 protocol
# --------------------------------------------------------------------------------------------
def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _positive_sets(positives: Any, q: int) -> list[list[int]]:
    if torch.is_tensor(positives) or isinstance(positives, np.ndarray):
        positives = _as_list(positives)
    if len(positives) != q:
        raise AtelierInputError(f"{len(positives)} positive entries for {q} queries")
    out = []
    for row, pos in enumerate(positives):
        items = [int(pos)] if isinstance(pos, (int, np.integer)) else [int(p) for p in pos]
        if not items:
            raise AtelierInputError(f"query {row} has no positive")
        out.append(items)
    return out


def sample_same_category_negatives(query_cats: Sequence, gallery_cats: Sequence, positives: Any,
                                   num_negatives: int = 99, seed: int = 0) -> torch.Tensor:
    """``[Q, num_negatives]`` gallery indices: for each query, negatives drawn without replacement
    from the gallery items of the query's category, never one of its positives. Seeded
    (``numpy.random.default_rng(seed)``, queries in order), so the candidate sets are reproducible.
    """
    qc, gc = _as_list(query_cats), _as_list(gallery_cats)
    pos = _positive_sets(positives, len(qc))
    pools: dict[Any, np.ndarray] = {}
    for col, cat in enumerate(gc):
        pools.setdefault(cat, []).append(col)
    pools = {cat: np.asarray(cols, dtype=np.int64) for cat, cols in pools.items()}
    rng = np.random.default_rng(seed)
    out = np.empty((len(qc), num_negatives), dtype=np.int64)
    for row, cat in enumerate(qc):
        pool = pools.get(cat, np.empty(0, dtype=np.int64))
        pool = pool[~np.isin(pool, pos[row])]
        if len(pool) < num_negatives:
            raise AtelierInputError(
                f"query {row}: category {cat!r} has only {len(pool)} non-positive gallery items, "
                f"{num_negatives} negatives are needed for the random-{num_negatives + 1} protocol"
            )
        out[row] = pool[rng.choice(len(pool), size=num_negatives, replace=False)]
    return torch.from_numpy(out)


def recall_random100_same_category(sim: Any, query_cats: Sequence, gallery_cats: Sequence, positives: Any,
                                   ks: Sequence[int] = (1, 5, 10), seed: int = 0,
                                   num_negatives: int = 99) -> dict[str, Any]:
    """Recall@K under the FashionGen "random 100" protocol (FashionBERT, Gao et al. 2020; used by
    KaleidoBERT, FashionViL, FAME-ViL and UniFashion Table 1).

    Each query's positive is ranked among itself and ``num_negatives`` (99) negatives sampled at
    random from the gallery items of the query's category (see
    :func:`sample_same_category_negatives`). ``positives``: index tensor ``[Q]`` or per query a
    list/set of gallery indices (all are candidates and excluded from the negatives; the best one
    counts). Returns ``{"R@k", ..., "num_queries", "num_candidates", "seed", "protocol"}``.
    """
    sim = _check_sim(sim)
    q, g = sim.shape
    if len(_as_list(gallery_cats)) != g or len(_as_list(query_cats)) != q:
        raise AtelierInputError(f"categories: {len(query_cats)} query / {len(gallery_cats)} gallery labels for sim {tuple(sim.shape)}")
    pos = _positive_sets(positives, q)
    negs = sample_same_category_negatives(query_cats, gallery_cats, pos, num_negatives, seed)
    ranks = torch.empty(q, dtype=torch.long)
    for row in range(q):
        best = sim[row, pos[row]].max()
        ranks[row] = int((sim[row, negs[row]] >= best).sum())  # ties against the positive
    return {**_recalls(ranks, ks), "num_queries": int(q), "num_candidates": 1 + int(num_negatives),
            "seed": int(seed),
            "protocol": f"random-{1 + num_negatives}: positive vs {num_negatives} random same-category negatives"}


# --------------------------------------------------------------------------------------------
# Fashion-IQ composed image retrieval
# --------------------------------------------------------------------------------------------
def fashioniq_recall(query_feats: Any, gallery_feats: Any, target_ids: Sequence, gallery_ids: Sequence,
                     ks: Sequence[int] = (10, 50), *, reference_ids: Sequence | None = None,
                     exclude_reference: bool = False, normalize: bool = True) -> dict[str, Any]:
    """Fashion-IQ (Wu et al., CVPR 2021) Recall@10/50 for one category (dress, shirt or toptee).

    ``query_feats [Q, D]``: composed (reference image + modification text) query embeddings;
    ``gallery_feats [G, D]`` with ``gallery_ids``: the category's image split (the official
    ``image_splits/split.<category>.val.json``); ``target_ids``: each query's target image id.
    Similarity is the cosine (``normalize=True``) or the dot product.

    Gallery protocol: by default (``exclude_reference=False``) the full category split is ranked,
    as the CLIP4Cir/SPRC-style validation code behind the Fashion-IQ rows of UniFashion Table 4
    does -- the protocol of the paper's numbers. ``exclude_reference=True`` with ``reference_ids`` is
    the extra TIRG/VAL/CoSMo-style view: each query's own reference image is removed from its ranking
    (it is otherwise a near-duplicate of the query); a reference equal to its target is kept. The
    rule used is reported in ``gallery_protocol``. Returns ``{"R@10", "R@50", "num_queries", "num_gallery",
    "num_reference_excluded", "gallery_protocol"}``; combine categories with :func:`fashioniq_summary`.
    """
    qf = torch.as_tensor(query_feats).float()
    gf = torch.as_tensor(gallery_feats).float()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise AtelierInputError(f"fashioniq_recall: features {tuple(qf.shape)} and {tuple(gf.shape)} are not [Q, D], [G, D]")
    gallery_ids, target_ids = _as_list(gallery_ids), _as_list(target_ids)
    if len(gallery_ids) != gf.shape[0] or len(target_ids) != qf.shape[0]:
        raise AtelierInputError(f"fashioniq_recall: {len(target_ids)} targets for {qf.shape[0]} queries, "
                                f"{len(gallery_ids)} ids for {gf.shape[0]} gallery images")
    if normalize:
        qf = torch.nn.functional.normalize(qf, dim=1)
        gf = torch.nn.functional.normalize(gf, dim=1)
    sim = qf @ gf.T
    col = {gid: i for i, gid in enumerate(gallery_ids)}
    if len(col) != len(gallery_ids):
        raise AtelierInputError("fashioniq_recall: gallery_ids contain duplicates")
    missing = [t for t in target_ids if t not in col]
    if missing:
        raise AtelierInputError(f"fashioniq_recall: {len(missing)} targets not in the gallery, e.g. {missing[:3]}")
    excluded = 0
    apply_exclusion = reference_ids is not None and exclude_reference
    if apply_exclusion:
        reference_ids = _as_list(reference_ids)
        if len(reference_ids) != len(target_ids):
            raise AtelierInputError(f"fashioniq_recall: {len(reference_ids)} reference ids for {len(target_ids)} queries")
        for row, (ref, tgt) in enumerate(zip(reference_ids, target_ids)):
            if ref in col and ref != tgt:
                sim[row, col[ref]] = float("-inf")
                excluded += 1
    res = recall_at_k(sim, torch.tensor([col[t] for t in target_ids]), ks=ks)
    rule = "query's reference image excluded from its ranking" if apply_exclusion else "no exclusion (full gallery ranked)"
    return {**{k: v for k, v in res.items() if k.startswith("R@")}, "num_queries": res["num_queries"],
            "num_gallery": res["num_gallery"], "num_reference_excluded": excluded,
            "gallery_protocol": f"category image split ({len(gallery_ids)} images); {rule}"}


def fashioniq_summary(per_category: Mapping[str, Mapping[str, float]], ks: Sequence[int] = (10, 50)) -> dict[str, Any]:
    """UniFashion Table 4 layout: per-category R@10/R@50, their averages over categories, and
    ``"Avg"`` = mean of the averaged R@10 and R@50 (e.g. (58.93 + 76.93) / 2 = 67.93)."""
    if not per_category:
        raise AtelierInputError("fashioniq_summary: no categories")
    avg = {f"R@{k}": float(np.mean([float(r[f"R@{k}"]) for r in per_category.values()])) for k in ks}
    return {"per_category": {c: {f"R@{k}": float(r[f"R@{k}"]) for k in ks} for c, r in per_category.items()},
            "average": avg, "Avg": float(np.mean(list(avg.values())))}
