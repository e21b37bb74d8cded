"""Fashion-IQ (Wu et al., CVPR 2021) in its own file format, for composed image retrieval.

Layout of a Fashion-IQ root (the real release and our derived triplets alike)::

    captions/cap.<category>.<split>.json        [{"candidate": id, "target": id, "captions": [s1, s2]}, ...]
    image_splits/split.<category>.<split>.json  [id, id, ...]                  (the split's gallery)
    images/<id>.jpg | <id>.png

``category`` is ``dress``, ``shirt`` or ``toptee``. The official test split withholds targets;
a missing ``"target"`` is read as ``None``. Queries are the reference ("candidate") image plus both
relative captions; the evaluation protocol lives in :mod:`lib.metrics.retrieval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lib.io import AtelierInputError, read_json

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_CAPTION_CHARS = 300


@dataclass(frozen=True)
class Triplet:
    candidate: str
    target: str | None
    captions: tuple[str, ...]


class FashionIQ:
    """Triplets and gallery of one ``(category, split)`` of a Fashion-IQ root, validated on load."""

    def __init__(self, root: str | Path, category: str, split: str, image_dir: str = "images",
                 check_images: bool = True):
        if category not in CATEGORIES:
            raise AtelierInputError(f"category must be one of {CATEGORIES}, got {category!r}")
        if split not in SPLITS:
            raise AtelierInputError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.category, self.split = category, split
        self.image_root = self.root / image_dir
        self.captions_file = self.root / "captions" / f"cap.{category}.{split}.json"
        self.split_file = self.root / "image_splits" / f"split.{category}.{split}.json"
        self.triplets = self._read_triplets()
        self.gallery = self._read_gallery()
        if check_images:
            self._check_images()

    def _read_triplets(self) -> list[Triplet]:
        raw = read_json(self.captions_file)
        if not isinstance(raw, list):
            raise AtelierInputError(f"{self.captions_file}: expected a JSON list of triplets, got {type(raw).__name__}")
        out = []
        for i, item in enumerate(raw):
            where = f"{self.captions_file}: entry {i}"
            if not isinstance(item, dict):
                raise AtelierInputError(f"{where}: expected an object, got {type(item).__name__}")
            cand = item.get("candidate")
            if not isinstance(cand, str) or not cand:
                raise AtelierInputError(f"{where}: field 'candidate' missing or not a non-empty string")
            target = item.get("target")
            if target is not None and (not isinstance(target, str) or not target):
                raise AtelierInputError(f"{where}: field 'target' is not a non-empty string")
            caps = item.get("captions")
            if not isinstance(caps, list) or not caps:
                raise AtelierInputError(f"{where}: field 'captions' must be a non-empty list")
            for j, cap in enumerate(caps):
                if not isinstance(cap, str) or not cap.strip():
                    raise AtelierInputError(f"{where}: captions[{j}] is empty or not a string")
                if len(cap) > MAX_CAPTION_CHARS:
                    raise AtelierInputError(
                        f"{where}: captions[{j}] is {len(cap)} characters long (limit {MAX_CAPTION_CHARS})"
                    )
            out.append(Triplet(cand, target, tuple(c.strip() for c in caps)))
        return out

    def _read_gallery(self) -> list[str]:
        raw = read_json(self.split_file)
        if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
            raise AtelierInputError(f"{self.split_file}: expected a JSON list of image ids (strings)")
        return raw

    def image_path(self, image_id: str) -> Path:
        for ext in IMAGE_EXTENSIONS:
            path = self.image_root / f"{image_id}{ext}"
            if path.is_file():
                return path
        raise AtelierInputError(f"{self.image_root}: no image file for id {image_id!r} (tried {IMAGE_EXTENSIONS})")

    def _check_images(self) -> None:
        if not self.image_root.is_dir():
            raise AtelierInputError(f"{self.image_root}: image folder not found")
        present = {p.stem for p in self.image_root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        for i, trip in enumerate(self.triplets):
            for field in ("candidate", "target"):
                image_id = getattr(trip, field)
                if image_id is not None and image_id not in present:
                    raise AtelierInputError(
                        f"{self.captions_file}: entry {i} names {field} image {image_id!r}, "
                        f"which does not exist in {self.image_root}"
                    )
        missing = [g for g in self.gallery if g not in present]
        if missing:
            raise AtelierInputError(
                f"{self.split_file}: {len(missing)} gallery image(s) missing from {self.image_root}, e.g. {missing[0]!r}"
            )

    def load_image(self, image_id: str, size: int | None = None):
        """The image as an RGB ``PIL.Image`` (optionally resized to ``size`` x ``size``)."""
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise AtelierInputError(f"size must be a positive integer or None, got {size!r}")
        path = self.image_path(image_id)
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BICUBIC)
                return img
        # DecompressionBombError: a header claiming hundreds of megapixels; ValueError: a mode
        # PIL cannot convert to RGB or a zero-sized image.
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise AtelierInputError(f"{path}: cannot read image ({err})") from None

    def query_text(self, triplet: Triplet) -> str:
        """Both relative captions joined, the usual way Fashion-IQ queries are formed."""
        return " and ".join(triplet.captions)

    def __len__(self) -> int:
        return len(self.triplets)
