"""Judges trained in-project and frozen: they stand in for networks the papers used but that are
unavailable offline (an ImageNet Inception classifier with logits for IS, CLIP for CLIP-score).

- :mod:`lib.judges.classifier`  -- category / colour / pattern heads; classifier score, domain FID,
  attribute accuracy.
- :mod:`lib.judges.contrastive` -- an image encoder aligned with the frozen MiniLM text encoder by a
  symmetric InfoNCE loss; CLIP-score as raw cosine.
"""
