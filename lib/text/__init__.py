"""Text: the frozen pretrained text encoder shared by Muse-style conditioning, judges and retrieval."""
