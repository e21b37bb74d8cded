"""Where the caption dataset comes from: ``data_source`` in params.yaml (issue 21).

Every later stage reads one on-disk dataset (``artifacts/data/captions``; format in
:mod:`lib.data.build`). This package builds that format from any of four sources:

``fashion_mnist``  today's recipe (:func:`lib.data.build.build_caption_dataset`), byte for byte:
                   real Fashion-MNIST shapes with painted colour / pattern, three attribute labels,
                   held-out compositions and Fashion-IQ-style triplets. The default.
``fashioniq``      a Fashion-IQ release (Wu et al., CVPR 2021): ``images/``, ``captions/cap.*.json``,
                   ``image_splits/split.*.json`` (:mod:`lib.data.sources.fashioniq`).
``fashiongen``     the FashionGen HDF5 files (Rostamzadeh et al., 2018)
                   (:mod:`lib.data.sources.fashiongen`).
``folder``         any images plus a ``captions.jsonl`` of ``{"image", "caption", "attributes"?,
                   "split"?}`` lines (:mod:`lib.data.sources.folder`).

A real source lacks some of what the recipe has (attribute labels, held-out compositions,
triplets). Its ``meta.json`` says which in ``capabilities``; :func:`unmet_requirements` names every
table row that needs what is missing, with the reason, so that a stage can skip it by name instead
of failing. ``meta.json`` without ``capabilities`` is the Fashion-MNIST recipe (which has all of
them): the recipe's output is left exactly as it was, so the committed default results stay valid.

The section is validated here, by the only stage that reads it (as ``unifashion`` is by
``lib.stages.unifashion``), and tracked by the ``data`` stage alone in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lib.io import AtelierInputError

KINDS = ("fashion_mnist", "fashioniq", "fashiongen", "folder")
FITS = ("pad", "crop")
#: every key of ``data_source`` and its default
DEFAULTS: dict[str, Any] = {
    "kind": "fashion_mnist",
    "root": None,
    "image_size": 32,
    "fit": "pad",
    "val_fraction": 0.1,
    "test_fraction": 0.1,
}
#: the image size every stage after ``data`` reads today (lib/data/caption_dataset.load_split)
PIPELINE_IMAGE_SIZE = 32

#: what a table row needs from the dataset -> who needs it and why (checked by unmet_requirements)
REQUIREMENTS: tuple[tuple[str, str, str], ...] = (
    ("attributes.category", "judges", "the attribute classifier judge trains on category labels"),
    ("attributes.colour", "judges", "the attribute classifier judge trains on colour labels"),
    ("attributes.pattern", "judges", "the attribute classifier judge trains on pattern labels"),
    ("attributes.category", "text_to_image", "attribute accuracy of generated images (classifier judge)"),
    ("heldout", "text_to_image", "rows on held-out (category, colour, pattern) compositions"),
    ("attributes.category", "unconditional", "the Inception-Score substitute is the category classifier"),
    ("attributes.colour", "editing", "edit success is read from the colour classifier"),
    ("triplets", "retrieval", "composed image retrieval (Fashion-IQ protocol) needs triplets"),
    ("triplets", "unifashion_phase2", "composed retrieval training needs triplets"),
    ("triplets", "composed_generation", "generation from a composed query needs triplets"),
    ("heldout", "captioning", "caption rows on held-out compositions"),
)


def _fraction(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v < 0.5


def source_settings(params: Mapping[str, Any], where: str = "params.yaml") -> dict[str, Any]:
    """The ``data_source`` section of a loaded profile with defaults filled in, checked (errors
    name the key). An absent section is the default source, ``fashion_mnist``."""
    raw = params.get("data_source") or {}
    if not isinstance(raw, Mapping):
        raise AtelierInputError(f"{where}: data_source: must be a mapping, got {type(raw).__name__}")
    problems = [f"data_source.{k}: unknown parameter (known: {', '.join(DEFAULTS)})" for k in raw if k not in DEFAULTS]
    S = {**DEFAULTS, **raw}
    if S["kind"] not in KINDS:
        problems.append(f"data_source.kind: one of {', '.join(KINDS)}, got {S['kind']!r}")
    size = S["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        problems.append(f"data_source.image_size: an integer in [8, 1024], got {size!r}")
    elif S["kind"] == "fashion_mnist" and size != PIPELINE_IMAGE_SIZE:
        problems.append(f"data_source.image_size: the fashion_mnist recipe paints 28 px garments onto "
                        f"{PIPELINE_IMAGE_SIZE} px images, got {size!r}")
    if S["fit"] not in FITS:
        problems.append(f"data_source.fit: one of {', '.join(FITS)}, got {S['fit']!r}")
    for key in ("val_fraction", "test_fraction"):
        if not _fraction(S[key]):
            problems.append(f"data_source.{key}: a number in [0, 0.5), got {S[key]!r}")
    root = S["root"]
    if S["kind"] == "fashion_mnist":
        if root is not None:
            problems.append("data_source.root: must be empty for fashion_mnist (it reads data/fashion-mnist, "
                            f"tracked by data.dvc), got {root!r}")
    elif not isinstance(root, str) or not root.strip():
        problems.append(f"data_source.root: the folder of the {S['kind']} release, got {root!r}")
    if problems:
        raise AtelierInputError(f"{where}: " + "; ".join(problems))
    return dict(S)


def resolve_root(settings: Mapping[str, Any]) -> Path:
    """``data_source.root`` as a path: relative paths are relative to the repository root."""
    from lib.store import repo_root

    root = Path(str(settings["root"])).expanduser()
    root = root if root.is_absolute() else repo_root() / root
    if not root.is_dir():
        raise AtelierInputError(f"data_source.root: {root} is not a folder (the {settings['kind']} release)")
    return root


def capabilities(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the built dataset has: attribute labels (per attribute), held-out compositions, triplets."""
    caps = meta.get("capabilities")
    if caps is None:  # the Fashion-MNIST recipe writes no such field and has everything
        return {"attributes": {"category": True, "colour": True, "pattern": True}, "heldout": True,
                "triplets": True, "image_size": PIPELINE_IMAGE_SIZE}
    return dict(caps)


def _has(caps: Mapping[str, Any], need: str) -> bool:
    head, _, attr = need.partition(".")
    return bool(caps["attributes"].get(attr)) if head == "attributes" else bool(caps.get(head))


def unmet_requirements(meta: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every (stage, what it needs, why) that the built dataset cannot feed, one dict per row."""
    caps = capabilities(meta)
    rows = [{"stage": stage, "needs": need, "reason": f"the source has no {need}: {why}"}
            for need, stage, why in REQUIREMENTS if not _has(caps, need)]
    if caps.get("image_size", PIPELINE_IMAGE_SIZE) != PIPELINE_IMAGE_SIZE:
        rows.append({"stage": "every stage after data", "needs": f"image_size {PIPELINE_IMAGE_SIZE}",
                     "reason": f"images are {caps['image_size']} px; the tokenizers, judges and metrics read "
                               f"{PIPELINE_IMAGE_SIZE} px until image_size flows through them (issue 21)"})
    return rows


def build(params: Mapping[str, Any], out_dir: str | Path, fmnist_root: str | Path | None = None) -> dict:
    """Build the caption dataset of ``params`` (a loaded profile) into ``out_dir``; returns ``meta``.

    ``data.max_train`` / ``max_val`` / ``max_test`` cap every source's splits the same way, and
    ``data.captions_per_image`` caps how many captions an image keeps.
    """
    S = source_settings(params)
    d = params["data"]
    limits = {"train": d["max_train"], "val": d["max_val"], "test": d["max_test"]}
    if S["kind"] == "fashion_mnist":
        from lib.data.build import build_caption_dataset
        from lib.store import data_dir

        return build_caption_dataset(
            fmnist_root or data_dir() / "fashion-mnist", out_dir, seed=params["seed"],
            captions_per_image=d["captions_per_image"], val_size=d["val_size"],
            heldout_per_category=d["heldout_per_category"], heldout_test_fraction=d["heldout_test_fraction"],
            max_per_split=limits,
        )
    import importlib

    module = importlib.import_module(f"lib.data.sources.{S['kind']}")
    return module.build(resolve_root(S), Path(out_dir), settings=S, seed=params["seed"], limits=limits,
                        captions_per_image=d["captions_per_image"])
