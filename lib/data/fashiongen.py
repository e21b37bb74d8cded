"""FashionGen (Rostamzadeh et al., 2018) in its HDF5 layout, for cross-modal retrieval and captions.

The release ships ``fashiongen_256_256_{train,validation}.h5`` with parallel datasets, among them
``input_image`` ``[N, 256, 256, 3]`` uint8, ``input_description`` ``[N, 1]`` bytes (latin-1 HTML-ish
text), ``input_category`` and ``input_subcategory`` ``[N, 1]`` bytes and ``input_productID``
``[N, 1]`` int. One product has several images (poses); retrieval protocols group by product id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.io import AtelierInputError

REQUIRED = ("input_image", "input_description", "input_category", "input_productID")
TEXT_FIELDS = ("input_description", "input_category", "input_subcategory")
#: longer text is corruption, not a product description (real ones are a few hundred characters)
MAX_TEXT_CHARS = 10_000


def _text(value) -> str:
    value = value[0] if isinstance(value, np.ndarray) and value.shape else value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    return str(value).strip()


class FashionGen:
    """Random access to a FashionGen HDF5 file; every required field is checked when opened."""

    def __init__(self, path: str | Path):
        # heavy and optional: only a FashionGen source reads HDF5
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise AtelierInputError(f"{self.path}: FashionGen HDF5 file not found")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise AtelierInputError(f"{self.path}: not a readable HDF5 file ({err})") from None
        try:
            self._check_layout(h5py)
        except AtelierInputError:
            self._h5.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:  # a damaged file's metadata
            self._h5.close()
            raise AtelierInputError(f"{self.path}: not a readable FashionGen HDF5 file ({err})") from None

    def _check_layout(self, h5py) -> None:
        missing = [k for k in REQUIRED if k not in self._h5]
        if missing:
            raise AtelierInputError(f"{self.path}: missing dataset(s) {missing}; found {sorted(self._h5.keys())}")
        present = [k for k in (*REQUIRED, "input_subcategory") if k in self._h5]
        for key in present:
            if not isinstance(self._h5[key], h5py.Dataset):
                raise AtelierInputError(f"{self.path}: '{key}' is a {type(self._h5[key]).__name__}, expected a dataset")
        images = self._h5["input_image"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise AtelierInputError(
                f"{self.path}: 'input_image' must be [N, H, W, 3] uint8, got {images.shape} {images.dtype}"
            )
        n = images.shape[0]
        for key in present[1:]:
            ds = self._h5[key]
            if ds.ndim not in (1, 2) or (ds.ndim == 2 and ds.shape[1] < 1):
                raise AtelierInputError(f"{self.path}: '{key}' must be [N] or [N, 1], got shape {ds.shape}")
            if ds.shape[0] != n:
                raise AtelierInputError(f"{self.path}: '{key}' has {ds.shape[0]} rows, 'input_image' has {n}")
            kinds, what = ("SUO", "text") if key in TEXT_FIELDS else ("iuf", "numbers")
            if ds.dtype.kind not in kinds:
                raise AtelierInputError(f"{self.path}: '{key}' must hold {what}, got {ds.dtype}")

    def __len__(self) -> int:
        return self._h5["input_image"].shape[0]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: index {i} out of range [0, {len(self)})")
        key = "input_image"
        try:  # a file damaged past its header fails here, on the first read of the damaged chunk
            item = {"image": np.asarray(self._h5[key][i])}
            for key, name in (("input_description", "description"), ("input_category", "category")):
                item[name] = self._text_field(key, i)
            key = "input_productID"
            item["product_id"] = self._product_id(i)
            if "input_subcategory" in self._h5:
                key = "input_subcategory"
                item["subcategory"] = self._text_field(key, i)
        except AtelierInputError:
            raise
        except (OSError, ValueError, TypeError, IndexError) as err:
            raise AtelierInputError(f"{self.path}: cannot read row {i} of '{key}' ({err})") from None
        if not item["description"]:
            raise AtelierInputError(f"{self.path}: row {i} has an empty 'input_description'")
        return item

    def _text_field(self, key: str, i: int) -> str:
        text = _text(self._h5[key][i])
        if len(text) > MAX_TEXT_CHARS:
            raise AtelierInputError(f"{self.path}: row {i} of '{key}' is {len(text)} characters long "
                                    f"(limit {MAX_TEXT_CHARS})")
        return text

    def _product_id(self, i: int) -> int:
        value = np.asarray(self._h5["input_productID"][i]).reshape(-1)[0]
        if value.dtype.kind == "f" and not float(value).is_integer():
            raise AtelierInputError(f"{self.path}: row {i} of 'input_productID' is {value}, not an integer id")
        return int(value)

    def product_ids(self) -> list[int]:
        """Every row's product id, read in one pass without decoding an image (splits by product)."""
        return [self._product_id(i) for i in range(len(self))]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
