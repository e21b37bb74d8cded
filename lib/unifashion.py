"""UniFashion's retrieval and captioning side as pipeline stages: settings, data, the DVC stage driver.

UniFashion (Zhao et al., 2024) trains in two phases (Sec. 3.1, 3.2, 4.1); each step here is one
DVC stage (``python -m lib.unifashion <phase> --profile P``), built on :mod:`lib.retrieval`:

- ``features``: frozen EfficientNet-Lite0 feature maps of the images the later phases use
  (:mod:`lib.retrieval.features`; the EVA-ViT-g stand-in) and frozen MiniLM token features of the
  Fashion-IQ queries ("<caption 1> and <caption 2>", ``modification_max_length`` tokens). Caption
  token features come from the ``text_features`` stage (``artifacts/text``, :func:`lib.generators.text_table`).
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

Outputs (below :func:`lib.paths.out_root`): ``artifacts/unifashion/<phase>/...`` (features,
checkpoints) and ``results/06_unifashion/<phase>/{metrics.json,loss.json}``. Evaluation in the
paper's table layouts lives in :mod:`lib.unifashion_eval`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from . import params as lib_params
from .io import AtelierInputError, atomic_write_json, read_json
from .paths import out_root

STAGE = "06_unifashion"
PHASES = ("features", "phase1", "captioner", "generator", "phase2")
ENV_PARAMS = "ATELIER_PARAMS"
QFORMER_FILE = "qformer.safetensors"
QFORMER_BASE_FILE = "qformer_base.safetensors"
DECODER_FILE = "decoder.safetensors"
GENERATOR_FILE = "query_generator.safetensors"
TOKENS_FILE = "train_tokens.safetensors"

#: What stands in for the paper's data and models (said once, used by both notebooks' tables).
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


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
#: the ``retrieval`` section's schema and checker live in lib.params (torch-free, issue 16)
settings = lib_params.retrieval_settings


def load_params(profile: str, path: str | Path | None = None) -> dict:
    """``lib.params.load(profile, path)``; ``path`` defaults to ``$ATELIER_PARAMS`` when set (tests),
    else the repository's ``params.yaml``."""
    return lib_params.load(profile, path or os.environ.get(ENV_PARAMS) or None)


def warmup_steps(R: Mapping[str, Any], steps: int) -> int:
    return max(1, int(round(float(R["warmup_fraction"]) * steps)))


# ---------------------------------------------------------------------------------------------
# Paths (nothing is created here: writers create parents atomically)
# ---------------------------------------------------------------------------------------------
def artifact_dir(phase: str) -> Path:
    if phase not in PHASES:
        raise AtelierInputError(f"phase must be one of {PHASES}, got {phase!r}")
    return out_root() / "artifacts" / "unifashion" / phase


def metrics_path(phase: str) -> Path:
    return out_root() / "results" / STAGE / phase / "metrics.json"


def loss_path(phase: str, variant: str = "") -> Path:
    return out_root() / "results" / STAGE / phase / f"loss{'_' + variant if variant else ''}.json"


def image_features_path(split: str) -> Path:
    return artifact_dir("features") / f"images_{split}.safetensors"


def modification_table_path() -> Path:
    return artifact_dir("features") / "modification_texts.safetensors"


def selection_path() -> Path:
    return artifact_dir("features") / "selection.json"


def qformer_path(phase: str, base: bool = False) -> Path:
    if phase not in ("phase1", "phase2"):
        raise AtelierInputError(f"Q-Former checkpoints exist for phase1 and phase2, not {phase!r}")
    if base and phase != "phase2":
        raise AtelierInputError("only phase 2 has a 'base' Q-Former (Eq. 10 without the caption decoder)")
    return artifact_dir(phase) / (QFORMER_BASE_FILE if base else QFORMER_FILE)


def decoder_path() -> Path:
    return artifact_dir("captioner") / DECODER_FILE


def generator_path() -> Path:
    return artifact_dir("generator") / GENERATOR_FILE


def train_tokens_path() -> Path:
    return artifact_dir("generator") / TOKENS_FILE


def caption_root() -> Path:
    return out_root() / "artifacts" / "data" / "captions"


# ---------------------------------------------------------------------------------------------
# Data: which images, Fashion-IQ queries
# ---------------------------------------------------------------------------------------------
def fashioniq_split(root: str | Path, split: str, categories: Sequence[str] | None = None,
                    check_images: bool = True) -> dict:
    """``{category: FashionIQ}`` of one split of a Fashion-IQ root (ours or the real release)."""
    from .data.fashioniq import CATEGORIES, FashionIQ

    return {cat: FashionIQ(root, cat, split, check_images=check_images) for cat in (categories or CATEGORIES)}


def _check_ids_in_split(fiq, ids, row_of: Mapping[str, int], split: str, root) -> None:
    """Every image a Fashion-IQ split names (gallery, candidates, targets) must be an image of the
    caption dataset's ``split``: an id of another split (an image file that exists, but a train
    image in a test gallery) would otherwise surface as a bare ``KeyError`` (issue 18)."""
    missing = sorted(i for i in ids if i not in row_of)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise AtelierInputError(
            f"{fiq.split_file} / {fiq.captions_file}: {len(missing)} image id(s) not in the {split!r} split of "
            f"{root} ({shown}); a {split} gallery and its triplets may only name {split} images")


def evaluable_triplets(fiq, limit: Optional[int] = None) -> list:
    """The triplets of a :class:`~lib.data.fashioniq.FashionIQ` split that have a target (the
    official test split withholds them), the first ``limit`` of them."""
    trips = [t for t in fiq.triplets if t.target is not None]
    return trips if limit is None else trips[:int(limit)]


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
            f"retrieval.train_images = {train_images} is smaller than the {len(needed)} images of the "
            f"{triplets_per_category} triplets per category (retrieval.train_triplets_per_category): raise it")
    rest = np.setdiff1d(np.arange(len(names)), np.fromiter(needed, dtype=np.int64, count=len(needed)))
    extra = np.random.default_rng(seed).choice(rest, size=min(train_images - len(needed), len(rest)), replace=False)
    return np.sort(np.concatenate([np.fromiter(needed, dtype=np.int64, count=len(needed)), extra])), kept


def query_texts(fiq, triplets: Sequence) -> list[str]:
    return [fiq.query_text(t) for t in triplets]


def composed_inputs(fiqs: Mapping[str, Any], image_features: Callable[[Any, list[str]], torch.Tensor],
                    text_features: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                    max_queries: Optional[int] = None) -> dict[str, dict]:
    """The ``categories`` argument of :func:`lib.retrieval.evaluate.composed_recall` for Fashion-IQ
    splits (``{category: FashionIQ}``): per category the evaluable queries (reference image +
    both relative captions joined, :meth:`FashionIQ.query_text`) and the split's whole image gallery.

    ``image_features(fiq, ids) -> [n, S, C_f]`` and ``text_features(texts) -> (tokens [n, L, 384],
    mask [n, L])`` supply the frozen features (from files, or from a cache).
    """
    out = {}
    for cat, fiq in fiqs.items():
        trips = evaluable_triplets(fiq, max_queries)
        if not trips:
            raise AtelierInputError(f"{fiq.captions_file}: no triplet with a target to evaluate")
        texts = query_texts(fiq, trips)
        tokens, mask = text_features(texts)
        refs, gallery = [t.candidate for t in trips], list(fiq.gallery)
        # every image once: references are usually gallery images too
        ids = list(dict.fromkeys(gallery + refs))
        feats = image_features(fiq, ids)
        where = {i: r for r, i in enumerate(ids)}
        out[cat] = {"reference_feats": feats[[where[i] for i in refs]], "text_tokens": tokens, "text_mask": mask,
                    "target_ids": [t.target for t in trips], "reference_ids": refs,
                    "gallery_feats": feats[:len(gallery)], "gallery_ids": gallery, "texts": texts}
    return out


def load_fashioniq_images(fiq, ids: Sequence[str], size: Optional[int] = None) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` images of ``ids`` read from a Fashion-IQ root (resized to ``size``)."""
    images = [np.asarray(fiq.load_image(i, size)) for i in ids]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise AtelierInputError(f"{fiq.image_root}: images have different sizes {sorted(shapes)[:3]}; pass size=")
    return np.stack(images)


def real_fashioniq_inputs(root: str | Path, split: str, extractor: torch.nn.Module,
                          encode_texts: Callable[[list[str]], Mapping[str, torch.Tensor]], *,
                          image_size: Optional[int] = 256, categories: Sequence[str] | None = None,
                          max_queries: Optional[int] = None, batch_size: int = 32) -> dict[str, dict]:
    """:func:`composed_inputs` of a real Fashion-IQ root: images read from ``images/``, resized to
    ``image_size`` and passed through the frozen ``extractor`` (:mod:`lib.retrieval.features`);
    query texts through ``encode_texts(list) -> {"tokens", "mask"}`` (e.g.
    ``lib.text.encoder.shared_encoder(32).encode``). Feed the result to
    :func:`lib.retrieval.evaluate.composed_recall`."""
    from .retrieval.features import extract_features

    def image_features(fiq, ids):  # in chunks: a real split's images would not fit in memory at once
        chunk = 16 * batch_size
        return torch.cat([extract_features(load_fashioniq_images(fiq, ids[i:i + chunk], image_size), extractor,
                                           batch_size) for i in range(0, len(ids), chunk)])

    def text_features(texts):
        enc = encode_texts(list(texts))
        return enc["tokens"], enc["mask"]

    return composed_inputs(fashioniq_split(root, split, categories), image_features, text_features, max_queries)


# ---------------------------------------------------------------------------------------------
# The features stage and what the later stages read back
# ---------------------------------------------------------------------------------------------
def feature_extractor(R: Mapping[str, Any]):
    from .retrieval.features import feature_extractor as make

    return make("efficientnet", size=int(R["image_size"]), out_index=int(R["out_index"]))


def modification_encoder(R: Mapping[str, Any]):
    from .text.encoder import FrozenTextEncoder

    return FrozenTextEncoder(max_length=int(R["modification_max_length"]))


def run_features(P: Mapping[str, Any], progress: bool = True) -> dict:
    """The ``unifashion_features`` stage: choose the images, cache their frozen features and the
    query texts' MiniLM token features, write ``selection.json`` and the stage metrics."""
    from .data.caption_dataset import load_split
    from .generation import TextFeatureTable
    from .provenance import run_info, write_metrics
    from .retrieval.features import cached_features

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
        _check_ids_in_split(fiq, ids, row_of, R["composed_split"], root)
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


@dataclass
class Workspace:
    """Everything the training phases and the notebooks read: cached image features (rows named by
    image id), split arrays and captions, the caption and query-text token tables, the selection."""

    R: dict
    seed: int
    selection: dict
    arrays: dict
    captions: dict
    feats: dict
    row: dict
    caption_table: Any
    caption_ids: dict
    modification_table: Any

    @classmethod
    def load(cls, P: Mapping[str, Any], splits: Sequence[str] | None = None) -> "Workspace":
        from .data.caption_dataset import load_split
        from .generation import TextFeatureTable
        from .generators import load_captions, text_table, text_table_path
        from .io import load_checkpoint

        R = settings(P)
        if not selection_path().is_file():
            raise AtelierInputError(f"{selection_path()}: missing; run the unifashion_features stage first "
                                    f"(python -m lib.unifashion features --profile {P['profile']})")
        if not text_table_path().is_file():
            raise AtelierInputError(f"{text_table_path()}: missing; run the text_features stage first "
                                    f"(python -m lib.generators text-features --profile {P['profile']})")
        sel = read_json(selection_path())
        splits = list(splits or sel["rows"])
        arrays, feats, row = {}, {}, {}
        for split in splits:
            arrays[split] = load_split(caption_root(), split)
            feats[split] = load_checkpoint(image_features_path(split))[0]["features"]
            names = sel["names"][split]
            if len(names) != len(feats[split]):
                raise AtelierInputError(f"{image_features_path(split)}: {len(feats[split])} rows, selection.json "
                                        f"names {len(names)}; rerun the unifashion_features stage")
            row[split] = {n: i for i, n in enumerate(names)}
        table, ids = text_table(progress=False)
        tensors, meta = load_checkpoint(modification_table_path())
        mod = TextFeatureTable(tensors["tokens"], tensors["mask"].bool(), meta.get("texts"))
        return cls(R, int(P["seed"]), sel, arrays, load_captions(), feats, row, table, ids, mod)

    # -- lookups ---------------------------------------------------------------------------------
    def features_of(self, split: str, ids: Sequence[str]) -> torch.Tensor:
        rows = self.row[split]
        missing = [i for i in ids if i not in rows]
        if missing:
            raise AtelierInputError(f"{len(missing)} image(s) of split {split!r} have no cached features, e.g. "
                                    f"{missing[:3]}: rerun the unifashion_features stage")
        return self.feats[split][torch.tensor([rows[i] for i in ids], dtype=torch.long)]

    def modification_rows(self, texts: Sequence[str]) -> torch.Tensor:
        where = {t: i for i, t in enumerate(self.modification_table.texts)}
        missing = [t for t in texts if t not in where]
        if missing:
            raise AtelierInputError(f"{len(missing)} query text(s) are not in {modification_table_path()}, e.g. "
                                    f"{missing[:2]}: rerun the unifashion_features stage")
        return torch.tensor([where[t] for t in texts], dtype=torch.long)

    def modification_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.modification_rows(texts)
        return self.modification_table.tokens[r], self.modification_table.mask[r]

    def fashioniq(self, split: str) -> dict:
        return fashioniq_split(caption_root() / "fashioniq", split, check_images=False)

    # -- training data ---------------------------------------------------------------------------
    @property
    def train_rows(self) -> np.ndarray:
        return np.asarray(self.selection["rows"]["train"], dtype=np.int64)

    def train_caption_ids(self) -> torch.Tensor:
        """``[N_sel, c]`` caption-table rows for the selected train images (feature-row order): every
        caption of the image's (category, colour, pattern) composition (see :func:`composition_caption_ids`)."""
        rows = self.train_rows
        return composition_caption_ids(composition_ids(self.arrays["train"], rows),
                                       self.caption_ids["train"][torch.from_numpy(rows)])

    def train_triplets(self) -> dict:
        """Phase-2 triplets as feature rows of the train split and query-text rows:
        ``{"reference", "target", "text_rows", "texts"}``."""
        ref, tgt, texts = [], [], []
        for cat, fiq in self.fashioniq("train").items():
            trips = fiq.triplets[:self.selection["train_triplets_per_category"][cat]]
            ref += [t.candidate for t in trips]
            tgt += [t.target for t in trips]
            texts += query_texts(fiq, trips)
        rows = self.row["train"]
        return {"reference": torch.tensor([rows[i] for i in ref]), "target": torch.tensor([rows[i] for i in tgt]),
                "text_rows": self.modification_rows(texts), "texts": texts}

    def caption_texts(self, rows: torch.Tensor) -> list[str]:
        return [self.caption_table.texts[int(i)] for i in rows]

    # -- evaluation data -------------------------------------------------------------------------
    def cmr_inputs(self) -> dict:
        """Cross-modal retrieval on the first ``cmr_images`` images of ``cmr_split``, every caption a
        text query. Groups: an image's (category, colour, pattern) composition, which its captions
        describe completely (captions of two images with the same composition are interchangeable,
        like FashionGen's several poses of one product)."""
        split = self.selection["cmr_split"]
        n = int(self.selection["cmr_images"])
        a = self.arrays[split]
        names = [str(x) for x in a["names"][:n]]
        cap_rows = self.caption_ids[split][:n]  # [n, c]
        flat = cap_rows.reshape(-1)
        return {"image_feats": self.features_of(split, names), "text_tokens": self.caption_table.tokens[flat],
                "text_mask": self.caption_table.mask[flat], "text_rows": flat,
                "text_image": torch.arange(n).repeat_interleave(cap_rows.shape[1]),
                "categories": a["category"][:n], "groups": composition_ids(a, np.arange(n)),
                "images": a["images"][:n], "texts": self.caption_texts(flat), "split": split}

    def composed_categories(self) -> dict:
        """:func:`composed_inputs` of ``composed_split`` from the cached features."""
        split = self.selection["composed_split"]
        return composed_inputs(self.fashioniq(split), lambda fiq, ids: self.features_of(split, ids),
                               self.modification_features, self.selection["composed_queries"])

    def composition_of(self, split: str) -> dict[str, int]:
        """Image id -> (category, colour, pattern) composition id, for every image of ``split``."""
        a = self.arrays[split]
        return dict(zip((str(n) for n in a["names"]), composition_ids(a, np.arange(len(a["names"]))).tolist()))

    def images_of(self, split: str, ids: Sequence[str]) -> np.ndarray:
        where = {str(n): i for i, n in enumerate(self.arrays[split]["names"])}
        return self.arrays[split]["images"][[where[i] for i in ids]]


def composition_ids(arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """One integer per (category, colour, pattern) composition of the images ``rows``."""
    return (arrays["category"][rows] * 100 + arrays["colour"][rows] * 10 + arrays["pattern"][rows]).astype(np.int64)


def composition_caption_ids(compositions: np.ndarray, caption_ids: torch.Tensor) -> torch.Tensor:
    """``[N, c_max]``: for every image, the distinct caption rows of all images of its composition
    (cycled to the longest such list).

    Our templated captions describe an image's composition completely (no caption text occurs for
    two compositions), so images of one composition share their captions, like FashionGen's views
    of one product. Phase 1 draws an image's caption from this list, and the training losses then
    count another image of the same composition as a positive for it, not as a (hard) negative."""
    compositions = np.asarray(compositions)
    if len(compositions) != len(caption_ids):
        raise AtelierInputError(f"{len(compositions)} compositions for {len(caption_ids)} caption rows")
    lists = {c: np.unique(caption_ids[torch.from_numpy(np.flatnonzero(compositions == c))].numpy())
             for c in np.unique(compositions)}
    width = max(len(v) for v in lists.values())
    return torch.from_numpy(np.stack([np.resize(lists[c], width) for c in compositions]).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def build_qformer(R: Mapping[str, Any], image_feats: torch.Tensor):
    from .retrieval.qformer import QFormer

    q = R["qformer"]
    return QFormer(image_dim=int(image_feats.shape[-1]), num_image_tokens=int(image_feats.shape[1]),
                   num_queries=q["num_queries"], dim=q["dim"], num_layers=q["num_layers"], heads=q["heads"],
                   embed_dim=q["embed_dim"], cross_every=q["cross_every"], ffn_mult=q["ffn_mult"],
                   dropout=float(q["dropout"]))


def build_vocab(captions: Sequence[str]):
    from .retrieval.caption_decoder import INSTRUCTIONS, CaptionVocab

    return CaptionVocab.build(captions, extra_texts=INSTRUCTIONS.values())


def build_decoder(R: Mapping[str, Any], vocab, qformer):
    from .retrieval.caption_decoder import INSTRUCTIONS, CaptionDecoder

    d = R["decoder"]
    return CaptionDecoder(vocab, query_dim=qformer.dim, num_queries=qformer.num_queries, dim=d["dim"],
                          num_layers=d["num_layers"], heads=d["heads"], num_prefix=d["num_prefix"],
                          max_len=d["max_len"], dropout=0.0, instructions=INSTRUCTIONS)


def load_trained(phase: str, base: bool = False, device: str = "cpu"):
    """A trained Q-Former (``phase1``/``phase2``, ``base`` for phase 2 without the decoder), the
    caption decoder (``captioner``) or the query generator (``generator``: adapter + generator),
    in eval mode; a missing checkpoint names its stage."""
    from .retrieval import load_caption_decoder, load_qformer
    from .retrieval.query_generation import load_query_generator

    path = {"captioner": decoder_path, "generator": generator_path}.get(phase, lambda: qformer_path(phase, base))()
    if not path.is_file():
        raise AtelierInputError(f"{path}: missing; run the unifashion_{phase} stage first")
    if phase == "captioner":
        return load_caption_decoder(path, device)
    return load_query_generator(path, device) if phase == "generator" else load_qformer(path, device)


def generation_backbone(P: Mapping[str, Any], R: Mapping[str, Any]):
    """``(generator, tokenizer, decoder tokenizer)``: the trained text-to-image model
    ``retrieval.generator.model`` (a ``generation.models`` entry) the generator phase starts from."""
    from .generators import load_trained as load_generator_model

    name = R["generator"]["model"]
    if name not in P["generation"]["models"]:
        raise AtelierInputError(f"params.yaml: retrieval.generator.model {name!r} is not in generation.models "
                                f"(known: {', '.join(P['generation']['models'])})")
    entry = P["generation"]["models"][name]
    if entry["kind"] != "masked" or entry["text_mode"] != "cross_attention":
        raise AtelierInputError(f"params.yaml: retrieval.generator.model {name!r} must be a masked model with "
                                f"text_mode cross_attention (Muse), got {entry['kind']} / {entry['text_mode']}")
    return load_generator_model(P, name)


def decoder_of(P: Mapping[str, Any], R: Mapping[str, Any]):
    """The tokenizer that turns the query generator's tokens into pixels (the backbone's ``decode_with``)."""
    return generation_backbone(P, R)[2]


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
    from .io import sha256_file
    from .provenance import run_info

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
    from .provenance import write_metrics
    from .retrieval.train import train_phase1_qformer
    from .training import write_loss_curve
    from .unifashion_eval import cross_modal

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
    from .provenance import write_metrics
    from .retrieval.train import train_phase1_captioner
    from .training import write_loss_curve
    from .unifashion_eval import caption_attribute_accuracy, caption_eval

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
    from .io import save_checkpoint
    from .provenance import write_metrics
    from .retrieval.query_generation import QueryAdapter, QueryGenerator, train_query_generator
    from .training import write_loss_curve

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
    """The token cache (:mod:`lib.tokens`, stage ``tokens@<tokenizer>``) of the generator backbone's
    tokenizer: this stage reads tokens, it does not tokenize images itself (issue 15)."""
    from . import tokenizers as T
    from . import tokens as TOK

    name = P["generation"]["models"][R["generator"]["model"]]["tokenizer"]
    return TOK.load(name, tokenizer_checkpoint=T.checkpoint_path(name))


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
    from .generation import masked_token_accuracy

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
    from .provenance import write_metrics
    from .retrieval.train import train_phase2_composed
    from .training import write_loss_curve
    from .unifashion_eval import composed

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
            metrics[name] = {"skipped": True, "reason": f"profiles.{P['profile']}.retrieval.steps.phase2_base = 0"}
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
    from .io import load_checkpoint

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


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.unifashion", description=__doc__.split("\n\n")[0])
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
    sys.exit(_main())
