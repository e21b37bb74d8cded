"""Caption generation from Q-Former query outputs: our stand-in for UniFashion's LLM (Sec. 3.1.2, 3.3).

UniFashion feeds the query outputs ``q`` through a Task Specific Adapter (TSA, "to linearly project
the output query embeddings q to match the dimensionality of the embeddings used by the LLM") into
LLaVA-1.5 / Vicuna and trains with the image-grounded text generation loss (Eq. 6):

    L_ITG = -1/L sum_l log p_phi(w_l | w_<l, f_theta(q)).

No LLM ships offline and none would run on 2 CPU cores, so a *small autoregressive transformer
trained from scratch* on the training captions stands in for it: word-level vocabulary, causal
self-attention over ``[learned prefix ; adapter(q) ; instruction words ; <bos> caption]``. The
adapter is ``Linear(d_q -> d)`` applied to every query output plus ``num_prefix`` learned prefix
vectors. Unlike the paper's frozen (LoRA-tuned) LLM, this decoder has to learn the language too.

Instruction tuning (Sec. 3.3, Table 7): optional dataset-specific instruction prompts
(:data:`INSTRUCTIONS`) are inserted between the image prefix and the caption, following the
template "USER: <Img><queries></Img> + Instruction. Assistant: <answer>"; the loss covers the
answer only.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lib.io import AtelierInputError, load_checkpoint
from lib.training import arch_of

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

#: UniFashion Table 7, "Examples of task instruction templates".
INSTRUCTIONS = {
    "fashion200k": "Short description.",
    "fashiongen": "Write a detail and professional description for the cloth.",
    "fashioniq-cap": "Describe the cloth's style, color, design... and other key points.",
}

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: ``"Dress, red"`` -> ``["dress", ",", "red"]``."""
    return _WORD.findall(text.lower())


def detokenize(words: Sequence[str]) -> str:
    """Inverse of :func:`tokenize_words` for lower-case text: no space before , . ; : ! ?"""
    return re.sub(r" ([,.;:!?])", r"\1", " ".join(words))


class CaptionVocab:
    """Word vocabulary; ids 0..3 are ``<pad> <bos> <eos> <unk>``."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise AtelierInputError(f"vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise AtelierInputError("vocabulary contains duplicate words")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.pad, self.bos, self.eos, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, extra_texts: Iterable[str] = ()) -> "CaptionVocab":
        """Words seen ``min_count`` times in ``captions`` (sorted by frequency, then alphabetically),
        plus every word of ``extra_texts`` (e.g. instruction prompts)."""
        counts = Counter(w for c in captions for w in tokenize_words(c))
        if not counts:
            raise AtelierInputError("CaptionVocab.build: no words in the captions")
        words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        extra = sorted({w for t in extra_texts for w in tokenize_words(t)} - set(words))
        return cls(list(SPECIALS) + words + extra)

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk) for w in tokenize_words(text)]

    def encode_batch(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        """``[N, max_len + 2]`` long: ``<bos>`` words (truncated to ``max_len``) ``<eos>``, then pad."""
        out = torch.full((len(texts), max_len + 2), self.pad, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.bos] + self.ids(text)[:max_len] + [self.eos]
            out[row, :len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<eos>``; ``<pad>``/``<bos>`` skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            words.append(self.words[i])
        return detokenize(words)


class CaptionDecoder(nn.Module):
    """Adapter + small causal transformer mapping Q-Former query outputs to a caption.

    Args:
        vocab: :class:`CaptionVocab` (build it with ``extra_texts=instructions.values()`` so
            instruction words have ids).
        query_dim, num_queries: ``d`` and ``Q`` of the Q-Former query outputs ``[B, Q, d]``.
        dim, num_layers, heads: the decoder transformer.
        num_prefix: learned prefix vectors before the adapted queries.
        max_len: longest caption in words (the sequence holds ``max_len + 2`` with bos/eos).
        instructions: ``{name: prompt}`` usable as ``instruction=name`` (Table 7: :data:`INSTRUCTIONS`).
    """

    def __init__(self, vocab: CaptionVocab, query_dim: int, num_queries: int, dim: int = 256, num_layers: int = 3,
                 heads: int = 4, num_prefix: int = 4, max_len: int = 16, dropout: float = 0.0,
                 instructions: Optional[Mapping[str, str]] = None):
        super().__init__()
        if max_len < 1 or num_queries < 1 or num_prefix < 0:
            raise AtelierInputError(f"CaptionDecoder: max_len >= 1, num_queries >= 1, num_prefix >= 0 required, got "
                                    f"{max_len}, {num_queries}, {num_prefix}")
        self.vocab = vocab
        self.instructions = dict(instructions or {})
        self.hparams = dict(query_dim=query_dim, num_queries=num_queries, dim=dim, num_layers=num_layers, heads=heads,
                            num_prefix=num_prefix, max_len=max_len, dropout=dropout)
        self.num_queries, self.num_prefix, self.max_len = num_queries, num_prefix, max_len
        for name, prompt in self.instructions.items():
            ids = vocab.ids(prompt)
            if not ids:
                raise AtelierInputError(f"instruction {name!r} has no words")
            self.register_buffer(f"instruction_{_buffer_name(name)}", torch.tensor(ids, dtype=torch.long),
                                 persistent=False)
        longest_instruction = max((len(vocab.ids(p)) for p in self.instructions.values()), default=0)
        # Task Specific Adapter: one linear map of each query output + learned prefix vectors.
        self.adapter = nn.Linear(query_dim, dim)
        self.prefix = nn.Parameter(torch.randn(1, num_prefix, dim) * 0.02)
        self.token_embed = nn.Embedding(len(vocab), dim)
        self.max_positions = num_prefix + num_queries + longest_instruction + max_len + 2
        self.pos_embed = nn.Parameter(torch.randn(1, self.max_positions, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(vocab))

    @property
    def arch(self) -> dict:
        return arch_of("caption_decoder", vocab=self.vocab.words, instructions=self.instructions, **self.hparams)

    def _condition(self, query_outputs: torch.Tensor, instruction: Optional[str]) -> torch.Tensor:
        """``[B, P + Q + I, dim]``: learned prefix, adapted queries, instruction word embeddings."""
        if query_outputs.dim() != 3 or query_outputs.shape[1:] != (self.num_queries, self.hparams["query_dim"]):
            raise AtelierInputError(f"query_outputs must be [B, {self.num_queries}, {self.hparams['query_dim']}], "
                                    f"got {tuple(query_outputs.shape)}")
        b = query_outputs.shape[0]
        parts = [self.prefix.expand(b, -1, -1), self.adapter(query_outputs.to(self.prefix.dtype))]
        if instruction is not None:
            if instruction not in self.instructions:
                raise AtelierInputError(f"instruction {instruction!r} unknown; this decoder knows "
                                        f"{sorted(self.instructions)}")
            ids = getattr(self, f"instruction_{_buffer_name(instruction)}")
            parts.append(self.token_embed(ids)[None].expand(b, -1, -1))
        return torch.cat(parts, 1)

    def logits(self, query_outputs: torch.Tensor, tokens: torch.Tensor,
               instruction: Optional[str] = None) -> torch.Tensor:
        """``[B, T, V]`` next-word logits for every position of ``tokens [B, T]`` (starting at <bos>)."""
        cond = self._condition(query_outputs, instruction)
        x = torch.cat([cond, self.token_embed(tokens)], 1)
        n = x.shape[1]
        if n > self.max_positions:
            raise AtelierInputError(f"sequence of {n} positions exceeds max_positions={self.max_positions} "
                                    f"(captions longer than max_len={self.max_len}?)")
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        h = self.transformer(x + self.pos_embed[:, :n], mask=causal)
        return self.head(self.norm(h[:, cond.shape[1]:]))

    def loss(self, query_outputs: torch.Tensor, caption_ids: torch.Tensor,
             instruction: Optional[str] = None) -> torch.Tensor:
        """Eq. 6 (L_ITG): mean token cross-entropy of ``caption_ids [B, T]`` (from
        :meth:`CaptionVocab.encode_batch`) given the query outputs; padding ignored."""
        if caption_ids.dim() != 2 or caption_ids.shape[1] < 2:
            raise AtelierInputError(f"caption_ids must be [B, T >= 2] with <bos> first, got {tuple(caption_ids.shape)}")
        logits = self.logits(query_outputs, caption_ids[:, :-1], instruction)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), caption_ids[:, 1:].reshape(-1),
                               ignore_index=self.vocab.pad)

    @torch.no_grad()
    def generate(self, query_outputs: torch.Tensor, max_len: Optional[int] = None, strategy: str = "greedy",
                 top_k: int = 5, temperature: float = 1.0, instruction: Optional[str] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[B, <= max_len + 1]`` word ids (each row ends with <eos>, then <pad>), decoded
        ``"greedy"`` or ``"top-k"`` (sample among the ``top_k`` likeliest words at ``temperature``)."""
        if strategy not in ("greedy", "top-k"):
            raise AtelierInputError(f"strategy must be 'greedy' or 'top-k', got {strategy!r}")
        max_len = self.max_len if max_len is None else int(max_len)
        if not 1 <= max_len <= self.max_len:
            raise AtelierInputError(f"max_len must be in [1, {self.max_len}], got {max_len}")
        if strategy == "top-k" and (top_k < 1 or temperature <= 0):
            raise AtelierInputError(f"top-k decoding needs top_k >= 1 and temperature > 0, got {top_k}, {temperature}")
        was_training = self.training
        self.eval()
        b, device = query_outputs.shape[0], query_outputs.device
        tokens = torch.full((b, 1), self.vocab.bos, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        banned = torch.tensor([self.vocab.pad, self.vocab.bos, self.vocab.unk], device=device)
        for step in range(max_len + 1):
            logits = self.logits(query_outputs, tokens, instruction)[:, -1].float()
            logits[:, banned] = float("-inf")
            if step == max_len:  # out of room: end the caption
                nxt = torch.full((b,), self.vocab.eos, dtype=torch.long, device=device)
            elif strategy == "greedy":
                nxt = logits.argmax(-1)
            else:
                values, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
                probs = torch.softmax(values / temperature, -1)
                nxt = idx.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, self.vocab.pad), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= nxt == self.vocab.eos
            if bool(done.all()):
                break
        self.train(was_training)
        return tokens[:, 1:]

    def generate_text(self, query_outputs: torch.Tensor, **kwargs) -> list[str]:
        """:meth:`generate` decoded to strings."""
        return [self.vocab.decode(row.tolist()) for row in self.generate(query_outputs, **kwargs)]


def _buffer_name(name: str) -> str:
    return re.sub(r"\W", "_", name)


def load_caption_decoder(ckpt_path, device: str = "cpu") -> CaptionDecoder:
    """A :class:`CaptionDecoder` rebuilt from a checkpoint's ``arch`` (vocabulary included), in eval mode."""
    tensors, meta = load_checkpoint(ckpt_path, device=device)
    arch = dict(meta.get("arch", {}))
    if arch.get("name") != "caption_decoder":
        raise AtelierInputError(f"{ckpt_path}: not a caption decoder checkpoint (arch name {arch.get('name')!r})")
    hp = {k: v for k, v in arch.items() if k not in ("name", "vocab", "instructions", "phase")}
    model = CaptionDecoder(CaptionVocab(arch["vocab"]), instructions=arch["instructions"], **hp)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model.to(device).eval()
