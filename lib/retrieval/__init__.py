"""UniFashion's retrieval and captioning side (Zhao et al., 2024, Sec. 3.1-3.3), at our scale.

One idea per module:

- :mod:`.features`        -- frozen image features (EfficientNet-Lite0 maps or a tokenizer's encoder), cached
- :mod:`.qformer`         -- the Q-Former (BLIP-2) with unimodal / bidirectional attention masks
- :mod:`.losses`          -- ITC (Eq. 3), ITM (Eq. 4) with hard negatives, the composed loss (Eq. 10)
- :mod:`.caption_decoder` -- small autoregressive caption decoder + adapter (the LLM's stand-in), Table 7 prompts
- :mod:`.index`           -- exact (or faiss) cosine search over a gallery of embeddings
- :mod:`.train`           -- phase 1 (Q-Former ITC+ITM; captioner) and phase 2 (composed), resumable
- :mod:`.evaluate`        -- cross-modal R@K (Table 1) and Fashion-IQ composed R@10/50 (Table 4)
"""

from lib.retrieval.caption_decoder import INSTRUCTIONS, CaptionDecoder, CaptionVocab, load_caption_decoder
from lib.retrieval.index import RetrievalIndex
from lib.retrieval.qformer import QFormer, load_qformer

__all__ = ["INSTRUCTIONS", "CaptionDecoder", "CaptionVocab", "QFormer", "RetrievalIndex", "load_caption_decoder",
           "load_qformer"]
