"""Stage two: generators over token grids (the interface is ``docs/generation_contract.md``).

Tokens are ``LongTensor [B, N, C]`` (N = H*W raster positions, C channels into one codebook of K
entries; id K = [MASK]). Modules, one idea each:

- :mod:`.conditioning`   -- :class:`Condition` (text / dropped text / visual crops / low-res tokens)
  and :class:`TextFeatureTable` (cached token-level frozen MiniLM features of every caption)
- :mod:`.masking`        -- training masks: Muse arccos rate, M6-Fashion strategies and condition
  combinations, visual crops
- :mod:`.layers`         -- pre-norm blocks, attention, the text conditioner with its null text
- :mod:`.transformer`    -- :class:`MaskedTokenTransformer` (MaskGIT/Muse/MoVQ/M6 configured by
  :class:`TransformerConfig`) and the masked-token loss
- :mod:`.autoregressive` -- :class:`ARTransformer`, the causal baseline with a KV cache
- :mod:`.train`          -- resumable training of both, and :func:`load_generator`

Sampling loops (MaskGIT, SMART, autoregressive) live in ``lib.sampling``.
"""

from lib.generation.autoregressive import ARTransformer, DecodeState
from lib.generation.conditioning import Condition, TextFeatureTable, class_text_table
from lib.generation.masking import (COMBINATION_PROBS_PRINTED, COMBINATION_PROBS_PROSE, COMBINATIONS, STRATEGIES, STRATEGY_PROBS,
                      boxes_to_grid, m6_mask, mask_rate, random_boxes, random_mask, sample_combinations,
                      sample_mask_rates, visual_crops)
from lib.generation.train import load_generator, train_autoregressive, train_masked
from lib.training import lr_factor
from lib.generation.transformer import ConditionCache, MaskedTokenTransformer, TransformerConfig, masked_token_accuracy, masked_token_loss

__all__ = [
    "ARTransformer", "DecodeState", "Condition", "TextFeatureTable", "class_text_table",
    "COMBINATIONS", "COMBINATION_PROBS_PROSE", "COMBINATION_PROBS_PRINTED", "STRATEGIES", "STRATEGY_PROBS",
    "boxes_to_grid", "m6_mask", "mask_rate", "random_boxes", "random_mask", "sample_combinations",
    "sample_mask_rates", "visual_crops", "load_generator", "lr_factor", "train_autoregressive", "train_masked",
    "ConditionCache", "MaskedTokenTransformer", "TransformerConfig", "masked_token_accuracy", "masked_token_loss",
]
