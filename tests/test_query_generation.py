"""Composed image generation from Q-Former queries (UniFashion Eq. 7 / Eq. 12 with a masked token generator)."""

from __future__ import annotations

import pytest
import torch

from lib.generation import MaskedTokenTransformer, TransformerConfig
from lib.io import AtelierInputError
from lib.retrieval import train as train_mod
from lib.retrieval.qformer import QFormer
from lib.retrieval.query_generation import (QueryAdapter, QueryGenerator, load_query_generator,
                                            train_query_generator)

torch.set_num_threads(1)

S, C, L = 4, 12, 5


def _qformer():
    torch.manual_seed(0)
    return QFormer(image_dim=C, num_image_tokens=S, num_queries=4, dim=32, num_layers=1, heads=2, embed_dim=16,
                   cross_every=1, dropout=0.0)


def _generator(text_mode="cross_attention", text_dim=384):
    torch.manual_seed(1)
    return MaskedTokenTransformer(TransformerConfig(grid_h=2, grid_w=2, channels=1, codebook_size=8, dim=32, depth=1,
                                                    heads=2, text_mode=text_mode, text_dim=text_dim, max_text_len=8))


def _toy(n=8, seed=0):
    """``n`` images: distinct random features, each with its own random 2x2 token grid."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, S, C, generator=gen)
    tokens = torch.randint(0, 8, (n, 4, 1), generator=gen)
    return feats, tokens


@torch.no_grad()
def _accuracy(qgen, q, tokens, drop):
    cfg = qgen.config
    masked = torch.full_like(tokens, cfg.mask_id)  # everything masked: the condition must carry the image
    logits = qgen.generator(masked, qgen.condition(q, torch.full((len(q),), drop)))
    return float((logits.argmax(-1) == tokens).float().mean())


def test_adapter_and_generator_check_their_inputs():
    qgen = QueryGenerator(QueryAdapter(32), _generator())
    cond = qgen.condition(torch.randn(3, 4, 32))
    assert cond.text_tokens.shape == (3, 4, 384) and cond.batch_size == 3
    with pytest.raises(AtelierInputError, match=r"\[B, Q, 32\]"):
        qgen.adapter(torch.randn(3, 4, 16))
    with pytest.raises(AtelierInputError, match="exceed the generator's max_text_len"):
        qgen.condition(torch.randn(3, 9, 32))
    with pytest.raises(AtelierInputError, match="cross_attention"):
        QueryGenerator(QueryAdapter(32), _generator(text_mode="in_sequence"))
    with pytest.raises(AtelierInputError, match="384-dim text features"):
        QueryGenerator(QueryAdapter(32, text_dim=64), _generator())


def test_adapter_learns_to_generate_each_image_from_its_queries_and_round_trips(tmp_path):
    feats, tokens = _toy()
    qformer = _qformer()
    q_state = {k: v.clone() for k, v in qformer.state_dict().items()}
    qgen = QueryGenerator(QueryAdapter(32), _generator())
    q = qformer.query_outputs(feats).detach()
    before = _accuracy(qgen, q, tokens, drop=False)
    hist = train_query_generator(qformer, qgen, feats, tokens, tmp_path / "qg.safetensors", steps=150, batch_size=8,
                                 lr=3e-3, warmup=5, cond_drop=0.0, label_smoothing=0.0, progress=False)
    after = _accuracy(qgen, q, tokens, drop=False)
    # fully masked grids are recovered from the queries alone; the null condition cannot tell images apart
    assert after >= 0.9 and after > before + 0.3, (before, after)
    assert _accuracy(qgen, q, tokens, drop=True) < 0.6
    assert sum(h["loss"] for h in hist[-10:]) < 0.3 * sum(h["loss"] for h in hist[:10])
    assert all(torch.equal(q_state[k], v) for k, v in qformer.state_dict().items())  # Q-Former frozen
    assert all(p.requires_grad for p in qformer.parameters())  # and its flags restored
    loaded = load_query_generator(tmp_path / "qg.safetensors")
    x = torch.full_like(tokens, qgen.config.mask_id)
    assert torch.equal(loaded.generator(x, loaded.condition(q)), qgen.generator(x, qgen.condition(q)))


def test_adapter_only_training_leaves_the_generator_untouched(tmp_path):
    feats, tokens = _toy()
    qgen = QueryGenerator(QueryAdapter(32), _generator())
    g_state = {k: v.clone() for k, v in qgen.generator.state_dict().items()}
    a_state = {k: v.clone() for k, v in qgen.adapter.state_dict().items()}
    train_query_generator(_qformer(), qgen, feats, tokens, tmp_path / "a.safetensors", steps=3, batch_size=4,
                          finetune_generator=False, progress=False)
    assert all(torch.equal(g_state[k], v) for k, v in qgen.generator.state_dict().items())
    assert not torch.equal(a_state["proj.weight"], qgen.adapter.proj.weight)
    assert all(p.requires_grad for p in qgen.generator.parameters())
    with pytest.raises(AtelierInputError, match=r"tokens must be long \[8, 4, 1\]"):
        train_query_generator(_qformer(), qgen, feats, tokens[:, :2], tmp_path / "b.safetensors", steps=1,
                              progress=False)
    with pytest.raises(AtelierInputError, match="not a query-generator checkpoint"):
        from lib.io import save_checkpoint
        save_checkpoint(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {"arch": {"name": "qformer"}})
        load_query_generator(tmp_path / "other.safetensors")


def test_phase2_eq12_term_trains_the_qformer_through_the_frozen_generator(tmp_path):
    feats, tokens = _toy(n=6)
    gen = torch.Generator().manual_seed(3)
    text_tokens, text_mask = torch.randn(6, L, 384, generator=gen), torch.ones(6, L, dtype=torch.bool)
    ref, tgt = torch.arange(6), torch.arange(6).roll(1)
    mod, caption_ids = torch.arange(6), torch.arange(6)[:, None]
    qgen = QueryGenerator(QueryAdapter(32), _generator())
    frozen = {k: v.clone() for k, v in qgen.state_dict().items()}
    model = _qformer()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    hist = train_mod.train_phase2_composed(model, feats, ref, tgt, mod, caption_ids, text_tokens, text_mask,
                                           tmp_path / "p2.safetensors", steps=3, batch_size=6, query_generator=qgen,
                                           target_tokens=tokens, progress=False)
    assert {"q2i", "q2i_acc"} <= set(hist[-1])
    assert all(torch.equal(frozen[k], v) for k, v in qgen.state_dict().items())
    assert all(p.requires_grad for p in qgen.parameters())
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    # without the term the history has no q2i; the weight scales the loss
    hist0 = train_mod.train_phase2_composed(_qformer(), feats, ref, tgt, mod, caption_ids, text_tokens, text_mask,
                                            tmp_path / "p2b.safetensors", steps=1, batch_size=6, progress=False)
    assert "q2i" not in hist0[-1]
    with pytest.raises(AtelierInputError, match="without target_tokens"):
        train_mod.train_phase2_composed(_qformer(), feats, ref, tgt, mod, caption_ids, text_tokens, text_mask,
                                        tmp_path / "p2c.safetensors", steps=1, query_generator=qgen, progress=False)
    with pytest.raises(AtelierInputError, match=r"target_tokens must be long \[6, 4, 1\]"):
        train_mod.train_phase2_composed(_qformer(), feats, ref, tgt, mod, caption_ids, text_tokens, text_mask,
                                        tmp_path / "p2d.safetensors", steps=1, query_generator=qgen,
                                        target_tokens=tokens[:3], progress=False)
