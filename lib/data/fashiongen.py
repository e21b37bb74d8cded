"""FashionGen (Rostamzadeh et al., 2018) in its HDF5 layout, for cross-modal retrieval and captions.

The release ships ``fashiongen_256_256_{train,validation}.h5`` with parallel datasets, among them
``input_image`` ``[N, 256, 256, 3]`` uint8, ``input_description`` ``[N, 1]`` bytes (latin-1 HTML-ish
text), ``input_category`` and ``input_subcategory`` ``[N, 1]`` bytes and ``input_productID``
``[N, 1]`` int. One product has several images (poses); retrieval protocols group by product id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import AtelierInputError

REQUIRED = ("input_image", "input_description", "input_category", "input_productID")


def _text(value) -> str:
    value = value[0] if isinstance(value, np.ndarray) and value.shape else value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    return str(value).strip()


class FashionGen:
    """Random access to a FashionGen HDF5 file; every required field is checked when opened."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise AtelierInputError(f"{self.path}: FashionGen HDF5 file not found")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise AtelierInputError(f"{self.path}: not a readable HDF5 file ({err})") from None
        missing = [k for k in REQUIRED if k not in self._h5]
        if missing:
            raise AtelierInputError(f"{self.path}: missing dataset(s) {missing}; found {sorted(self._h5.keys())}")
        images = self._h5["input_image"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise AtelierInputError(
                f"{self.path}: 'input_image' must be [N, H, W, 3] uint8, got {images.shape} {images.dtype}"
            )
        n = images.shape[0]
        for key in REQUIRED[1:]:
            if self._h5[key].shape[0] != n:
                raise AtelierInputError(f"{self.path}: '{key}' has {self._h5[key].shape[0]} rows, 'input_image' has {n}")

    def __len__(self) -> int:
        return self._h5["input_image"].shape[0]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: index {i} out of range [0, {len(self)})")
        item = {
            "image": np.asarray(self._h5["input_image"][i]),
            "description": _text(self._h5["input_description"][i]),
            "category": _text(self._h5["input_category"][i]),
            "product_id": int(np.asarray(self._h5["input_productID"][i]).reshape(-1)[0]),
        }
        if "input_subcategory" in self._h5:
            item["subcategory"] = _text(self._h5["input_subcategory"][i])
        if not item["description"]:
            raise AtelierInputError(f"{self.path}: row {i} has an empty 'input_description'")
        return item

    def close(self) -> None:
        self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
