"""UniFashion's trained components from the stages' artifacts: the frozen image and text encoders,
the Q-Former of each phase, the caption decoder, the query generator and its text-to-image backbone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from lib.config import unifashion_settings as settings
from lib.data.caption_dataset import load_split
from lib.data.fashioniq import CATEGORIES, FashionIQ
from lib.generation import TextFeatureTable
from lib.io import AtelierInputError, load_checkpoint, read_json
from lib.pipelines.generators import load_captions, load_trained as load_generator_model, text_table
from lib.retrieval import load_caption_decoder, load_qformer
from lib.retrieval.caption_decoder import INSTRUCTIONS, CaptionDecoder, CaptionVocab
from lib.retrieval.features import extract_features, feature_extractor as make
from lib.retrieval.qformer import QFormer
from lib.retrieval.query_generation import load_query_generator
from lib.store import caption_root
from lib.store.generators import text_table_path
from lib.store.unifashion import (
    decoder_path,
    generator_path,
    image_features_path,
    modification_table_path,
    qformer_path,
    selection_path,
)
from lib.text.encoder import FrozenTextEncoder


def feature_extractor(R: Mapping[str, Any]):
    return make("efficientnet", size=int(R["image_size"]), out_index=int(R["out_index"]))


def modification_encoder(R: Mapping[str, Any]):
    return FrozenTextEncoder(max_length=int(R["modification_max_length"]))


def build_qformer(R: Mapping[str, Any], image_feats: torch.Tensor):
    q = R["qformer"]
    return QFormer(image_dim=int(image_feats.shape[-1]), num_image_tokens=int(image_feats.shape[1]),
                   num_queries=q["num_queries"], dim=q["dim"], num_layers=q["num_layers"], heads=q["heads"],
                   embed_dim=q["embed_dim"], cross_every=q["cross_every"], ffn_mult=q["ffn_mult"],
                   dropout=float(q["dropout"]))


def build_vocab(captions: Sequence[str]):
    return CaptionVocab.build(captions, extra_texts=INSTRUCTIONS.values())


def build_decoder(R: Mapping[str, Any], vocab, qformer):
    d = R["decoder"]
    return CaptionDecoder(vocab, query_dim=qformer.dim, num_queries=qformer.num_queries, dim=d["dim"],
                          num_layers=d["num_layers"], heads=d["heads"], num_prefix=d["num_prefix"],
                          max_len=d["max_len"], dropout=0.0, instructions=INSTRUCTIONS)


def load_trained(phase: str, base: bool = False, device: str = "cpu"):
    """A trained Q-Former (``phase1``/``phase2``, ``base`` for phase 2 without the decoder), the
    caption decoder (``captioner``) or the query generator (``generator``: adapter + generator),
    in eval mode; a missing checkpoint names its stage."""
    path = {"captioner": decoder_path, "generator": generator_path}.get(phase, lambda: qformer_path(phase, base))()
    if not path.is_file():
        raise AtelierInputError(f"{path}: missing; run the unifashion_{phase} stage first")
    if phase == "captioner":
        return load_caption_decoder(path, device)
    return load_query_generator(path, device) if phase == "generator" else load_qformer(path, device)


def generation_backbone(P: Mapping[str, Any], R: Mapping[str, Any]):
    """``(generator, tokenizer, decoder tokenizer)``: the trained text-to-image model
    ``unifashion.generator.model`` (a ``generation.models`` entry) the generator phase starts from."""
    name = R["generator"]["model"]
    if name not in P["generation"]["models"]:
        raise AtelierInputError(f"params.yaml: unifashion.generator.model {name!r} is not in generation.models "
                                f"(known: {', '.join(P['generation']['models'])})")
    entry = P["generation"]["models"][name]
    if entry["kind"] != "masked" or entry["text_mode"] != "cross_attention":
        raise AtelierInputError(f"params.yaml: unifashion.generator.model {name!r} must be a masked model with "
                                f"text_mode cross_attention (Muse), got {entry['kind']} / {entry['text_mode']}")
    return load_generator_model(P, name)


def decoder_of(P: Mapping[str, Any], R: Mapping[str, Any]):
    """The tokenizer that turns the query generator's tokens into pixels (the backbone's ``decode_with``)."""
    return generation_backbone(P, R)[2]


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
        R = settings(P)
        if not selection_path().is_file():
            raise AtelierInputError(f"{selection_path()}: missing; run the unifashion_features stage first "
                                    f"(python -m lib.stages.unifashion features --profile {P['profile']})")
        if not text_table_path().is_file():
            raise AtelierInputError(f"{text_table_path()}: missing; run the text_features stage first "
                                    f"(python -m lib.stages.generator text-features --profile {P['profile']})")
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


def fashioniq_split(root: str | Path, split: str, categories: Sequence[str] | None = None,
                    check_images: bool = True) -> dict:
    """``{category: FashionIQ}`` of one split of a Fashion-IQ root (ours or the real release)."""
    return {cat: FashionIQ(root, cat, split, check_images=check_images) for cat in (categories or CATEGORIES)}


def check_ids_in_split(fiq, ids, row_of: Mapping[str, int], split: str, root) -> None:
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
    def image_features(fiq, ids):  # in chunks: a real split's images would not fit in memory at once
        chunk = 16 * batch_size
        return torch.cat([extract_features(load_fashioniq_images(fiq, ids[i:i + chunk], image_size), extractor,
                                           batch_size) for i in range(0, len(ids), chunk)])

    def text_features(texts):
        enc = encode_texts(list(texts))
        return enc["tokens"], enc["mask"]

    return composed_inputs(fashioniq_split(root, split, categories), image_features, text_features, max_queries)


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
