"""Token samplers for masked and autoregressive token models (see ``docs/generation_contract.md``).

- :mod:`.base`           -- :class:`SamplerState`, the :class:`TokenScheduler` step contract
- :mod:`.maskgit`        -- MaskGIT / Muse Sec. 2.8 confidence-based parallel decoding (cosine schedule)
- :mod:`.smart`          -- M6-Fashion Sec. 3.2 SMART self-correcting re-mask / re-predict sampling
- :mod:`.guidance`       -- Muse Sec. 2.7 classifier-free guidance, linear guidance schedule, negative prompts
- :mod:`.autoregressive` -- top-k / nucleus filtering, raster autoregressive sampling with a KV cache
- :mod:`.pipeline`       -- :func:`sample`, the loop of a scheduler against a ``logits_fn``
- :mod:`.editing`        -- in/out-painting, local editing, style mixing, Muse mask-free editing

Samplers never see a model: they get ``logits_fn(tokens [B,N,C]) -> logits [B,N,C,K]``.
"""

from lib.sampling.autoregressive import AutoregressiveScheduler, filter_logits, sample_autoregressive
from lib.sampling.base import SamplerState, TokenScheduler
from lib.sampling.editing import (blank_grid, boundary_ring, box_mask, inpaint, mask_free_edit, outpaint, paste_region,
                      style_mix)
from lib.sampling.guidance import ClassifierFreeGuidance, LinearGuidanceSchedule, guided_logits
from lib.sampling.maskgit import MaskGITScheduler
from lib.sampling.pipeline import sample
from lib.sampling.smart import SMARTScheduler

__all__ = ["SamplerState", "TokenScheduler", "MaskGITScheduler", "SMARTScheduler", "AutoregressiveScheduler",
           "filter_logits", "sample_autoregressive", "guided_logits", "LinearGuidanceSchedule",
           "ClassifierFreeGuidance", "sample", "blank_grid", "box_mask", "boundary_ring", "inpaint", "outpaint",
           "paste_region", "style_mix", "mask_free_edit"]
