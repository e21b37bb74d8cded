"""Atelier: token-based fashion image generation, editing and retrieval.

A thin library that the notebooks in ``notebooks/`` drive. One idea per module:

- :mod:`lib.store`      -- repository root and output locations (``ATELIER_OUT``)
- :mod:`lib.io`         -- atomic writes, safetensors checkpoints, strict JSON reading
- :mod:`lib.provenance` -- what every metrics JSON records about how it was computed
- :mod:`lib.config`     -- ``params.yaml`` profiles and their validation
- :mod:`lib.data`       -- Fashion-MNIST, the derived caption dataset, Fashion-IQ/FashionGen loaders
"""

__version__ = "0.1.0"
