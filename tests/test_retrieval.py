"""UniFashion retrieval/captioning library: Q-Former masks, losses, index, evaluation, training phases."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.io import AtelierInputError
from lib.metrics.retrieval import recall_at_k, recall_random100_same_category
from lib.retrieval import train as train_mod
from lib.retrieval.caption_decoder import (INSTRUCTIONS, CaptionDecoder, CaptionVocab, detokenize,
                                           load_caption_decoder, tokenize_words)
from lib.retrieval.evaluate import (composed_recall, composed_recall_from_embeddings, composed_similarity,
                                    cross_modal_recall, embed_images, embed_texts)
from lib.retrieval.index import RetrievalIndex
from lib.retrieval.losses import (cir_target_caption_itc, cir_target_image_itc, image_text_contrastive, itc_loss,
                                  itm_loss, max_query_similarity, sample_hard_negatives)
from lib.retrieval.qformer import QFormer, load_qformer, self_attention_mask

torch.set_num_threads(1)

S, C, L = 4, 12, 5  # image tokens, image channels, text length


def _qformer(**kw):
    torch.manual_seed(0)
    cfg = dict(image_dim=C, num_image_tokens=S, num_queries=4, dim=32, num_layers=2, heads=2, embed_dim=16,
               cross_every=1, dropout=0.0)
    cfg.update(kw)
    return QFormer(**cfg)


def _text(b, gen):
    tok = torch.randn(b, L, 384, generator=gen)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[::2, 3:] = False
    return tok * mask[..., None], mask


# ------------------------------------------------------------------------------------------------
# Q-Former attention masks
# ------------------------------------------------------------------------------------------------
def test_self_attention_mask_patterns():
    text_mask = torch.tensor([[True, True, False]])
    uni = self_attention_mask(2, text_mask, "unimodal", 1, torch.device("cpu"))[0, 0].int().tolist()
    bi = self_attention_mask(2, text_mask, "bidirectional", 1, torch.device("cpu"))[0, 0].int().tolist()
    assert uni == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert bi == [[1, 1, 1, 1, 0]] * 5
    with pytest.raises(AtelierInputError, match="mask must be one of"):
        self_attention_mask(2, text_mask, "causal", 1, torch.device("cpu"))


def test_unimodal_mask_separates_queries_and_text_bidirectional_does_not():
    model = _qformer().eval()
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(3, S, C, generator=gen)
    tok, mask = _text(3, gen)
    tok2 = tok + torch.randn(tok.shape, generator=gen) * mask[..., None]
    feats2 = feats + torch.randn(feats.shape, generator=gen)
    with torch.no_grad():
        q, t = model(feats, tok, mask, "unimodal")
        q_tp, _ = model(feats, tok2, mask, "unimodal")       # text perturbed
        _, t_ip = model(feats2, tok, mask, "unimodal")       # image perturbed
        assert torch.allclose(q, q_tp, atol=1e-6) and torch.allclose(t, t_ip, atol=1e-6)
        # the joint unimodal pass is the separate image-only and text-only passes
        assert torch.allclose(q, model.query_outputs(feats), atol=1e-5)
        assert torch.allclose(t, model(text_tokens=tok, text_mask=mask)[1], atol=1e-5)
        qb, tb = model(feats, tok, mask, "bidirectional")
        qb_tp, _ = model(feats, tok2, mask, "bidirectional")
        _, tb_ip = model(feats2, tok, mask, "bidirectional")
        assert (qb - qb_tp).abs().max() > 1e-2 and (tb - tb_ip).abs().max() > 1e-2
        # padded text positions are invisible under both masks
        junk = tok.clone()
        junk[~mask] = 5.0
        for mode in ("unimodal", "bidirectional"):
            a, b = model(feats, tok, mask, mode), model(feats, junk, mask, mode)
            assert torch.allclose(a[0], b[0], atol=1e-6)
            assert torch.allclose(a[1][mask], b[1][mask], atol=1e-6)


def test_qformer_api_shapes_and_input_errors():
    model = _qformer().eval()
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(3, S, C, generator=gen)
    tok, mask = _text(3, gen)
    emb = model.image_embeds(feats)
    assert emb.shape == (3, 4, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert model.text_embed(tok, mask).shape == (3, 16)
    assert model.multimodal(feats, tok, mask).shape == (3, 4, 32)
    assert model.itm_logits(feats, tok, mask).shape == (3, 2)
    assert torch.allclose(model.composed_embed(feats, tok, mask).norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(AtelierInputError, match=r"\[B, S, 12\]"):
        model.image_embeds(torch.randn(3, S, C + 1))
    with pytest.raises(AtelierInputError, match="num_image_tokens=4"):
        model.image_embeds(torch.randn(3, S + 1, C))
    bad = mask.clone()
    bad[0, 0] = False
    with pytest.raises(AtelierInputError, match="CLS"):
        model.text_embed(tok, bad)


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def test_itc_aligned_batch_beats_shuffled_and_duplicates_are_positives():
    gen = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    images = F.normalize(torch.randn(6, 3, 8, generator=gen), dim=1)
    images[:, 1] = text  # one query of each image matches its caption exactly
    scale = torch.tensor(10.0)
    aligned, sim = image_text_contrastive(images, text, scale)
    shuffled, _ = image_text_contrastive(images, text[torch.tensor([1, 2, 3, 4, 5, 0])], scale)
    assert aligned < shuffled
    assert torch.allclose(sim, max_query_similarity(images, text)) and torch.allclose(sim.diagonal(), torch.ones(6))
    # Eq. 3 one-directional is a plain cross-entropy over rows
    assert torch.allclose(itc_loss(sim, scale, symmetric=False), F.cross_entropy(sim * scale, torch.arange(6)))
    # texts 0 and 1 are the same caption: image 0 scoring text 1 highest is not an error any more
    sim = torch.tensor([[0.2, 0.9, 0.0], [0.9, 0.2, 0.0], [0.0, 0.0, 1.0]])
    pos = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    logp = F.log_softmax(sim * scale, dim=1)
    expected = -(0.5 * (logp[0, 0] + logp[0, 1]) + 0.5 * (logp[1, 0] + logp[1, 1]) + logp[2, 2]) / 3
    assert torch.allclose(itc_loss(sim, scale, pos, symmetric=False), expected)
    assert itc_loss(sim, scale, pos) < itc_loss(sim, scale) - 1.0
    with pytest.raises(AtelierInputError, match="every row needs at least one positive"):
        itc_loss(sim, scale, torch.zeros(3, 3, dtype=torch.bool))


def test_hard_negatives_never_draw_positives():
    gen = torch.Generator().manual_seed(4)
    sim = torch.randn(5, 5, generator=gen)
    pos = torch.eye(5, dtype=torch.bool)
    pos[0, 1] = True
    pos[4] = True  # row 4: everything is a positive
    for _ in range(20):
        idx, valid = sample_hard_negatives(sim, pos, torch.tensor(20.0), generator=gen)
        assert valid.tolist() == [True, True, True, True, False]
        assert not pos[torch.arange(4), idx[:4]].any()


def test_itm_loss_builds_positive_and_negative_pairs():
    b = 6
    feats = torch.arange(b, dtype=torch.float32)[:, None, None].expand(b, S, C)
    tokens = torch.arange(b, dtype=torch.float32)[:, None, None].expand(b, L, 384)
    mask = torch.ones(b, L, dtype=torch.bool)

    def oracle(f, t, m):  # "match" exactly when image and text carry the same id
        same = (f[:, 0, 0] == t[:, 0, 0]).float()
        return torch.stack([-20 * same, 20 * same], 1) + torch.stack([10 * (1 - same), -10 * (1 - same)], 1)

    loss, stats = itm_loss(oracle, feats, tokens, mask, torch.randn(b, b), torch.eye(b, dtype=torch.bool),
                           torch.tensor(5.0))
    assert stats["itm_acc"] == 1.0 and stats["itm_negatives"] == 2 * b and loss < 1e-3


def test_composed_loss_terms_prefer_the_true_target():
    gen = torch.Generator().manual_seed(5)
    targets = F.normalize(torch.randn(4, 2, 8, generator=gen), dim=-1)
    captions = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    composed = F.normalize(targets[:, 0] + captions, dim=-1)
    pos = torch.eye(4, dtype=torch.bool)
    right, _ = cir_target_image_itc(composed, targets, torch.tensor(10.0), pos)
    wrong, _ = cir_target_image_itc(composed.roll(1, 0), targets, torch.tensor(10.0), pos)
    assert right < wrong
    assert cir_target_caption_itc(composed, captions, torch.tensor(10.0), pos) < \
        cir_target_caption_itc(composed.roll(1, 0), captions, torch.tensor(10.0), pos)


# ------------------------------------------------------------------------------------------------
# index
# ------------------------------------------------------------------------------------------------
def _constructed_gallery():
    gallery = torch.eye(5)[:, :5] * 1.0  # five orthogonal items
    # query i aims at item i; queries 3 and 4 lean more towards another item
    queries = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0],
                            [0.6, 0, 0, 0.5, 0], [0, 0.7, 0.6, 0, 0.5]])
    return gallery, queries, torch.arange(5)


def test_index_search_gives_exact_recall():
    gallery, queries, targets = _constructed_gallery()
    index = RetrievalIndex(gallery * 3.0, ids=[f"g{i}" for i in range(5)], chunk=2)  # scale must not matter
    scores, idx = index.search(queries, k=3)
    assert idx[:, 0].tolist() == [0, 1, 2, 0, 1]
    assert idx[4].tolist() == [1, 2, 4]
    hit = lambda k: float((idx[:, :k] == targets[:, None]).any(1).float().mean())  # noqa: E731
    assert (hit(1), hit(2), hit(3)) == pytest.approx((0.6, 0.8, 1.0))
    sim = F.normalize(queries, dim=1) @ gallery.T
    ref = recall_at_k(sim, targets, ks=(1, 2, 3))
    assert (ref["R@1"], ref["R@2"], ref["R@3"]) == pytest.approx((0.6, 0.8, 1.0))
    assert torch.allclose(scores, sim.topk(3, dim=1).values)
    assert index.ids_of(idx[3:5, :1]) == [["g0"], ["g1"]]
    with pytest.raises(AtelierInputError, match="k must be in"):
        index.search(queries, k=6)
    with pytest.raises(AtelierInputError, match=r"queries must be \[Q, 5\]"):
        index.search(torch.randn(2, 4), k=1)


def test_index_save_load_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(6)
    emb = torch.randn(20, 8, generator=gen)
    index = RetrievalIndex(emb, ids=[f"item{i}" for i in range(20)])
    path = index.save(tmp_path / "index.safetensors")
    loaded = RetrievalIndex.load(path)
    queries = torch.randn(4, 8, generator=gen)
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
        assert torch.equal(a, b)
    assert loaded.ids == index.ids and torch.equal(loaded.embeddings, index.embeddings)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss is installed here")
def test_faiss_backend_explains_how_to_install():
    with pytest.raises(AtelierInputError, match=r"faiss package, which is not installed.*pip install faiss-cpu.*exact"):
        RetrievalIndex(torch.randn(4, 3), backend="faiss")
    with pytest.raises(AtelierInputError, match="backend must be one of"):
        RetrievalIndex(torch.randn(4, 3), backend="annoy")


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def test_composed_recall_reproduces_hand_computed_values():
    # Gallery of 5 images, one query embedding each (Q = 1), and unit caption embeddings.
    e = torch.eye(5)
    gallery = {"images": e[:, None, :], "captions": e[[1, 0, 2, 3, 4]]}
    gallery_ids = ["a", "b", "c", "d", "e"]
    composed = F.normalize(torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0],    # target b: b ranks 2nd -> hit at K=2
                                         [0.0, 0.2, 0.0, 0.9, 0.1],    # target e: rank 3 (d, b, e)
                                         [0.0, 0.0, 1.0, 0.0, 0.0]]),  # target a: a last-but-tied (0)
                           dim=1)
    targets, references = ["b", "e", "a"], ["c", "c", "c"]
    # hand-computed ranks of the target, reference "c" excluded: query 0 -> a(0.9) > b -> rank 2;
    # query 1 -> d > b > e -> rank 3; query 2 -> every remaining item scores 0 -> a ties, counted
    # against it -> rank 4 (a, b, d, e all 0, c excluded).
    res = composed_recall_from_embeddings({"composed": composed}, gallery, targets, gallery_ids, references,
                                          variants=("full", "w/o img", "w/ cap"), ks=(1, 2, 3, 4),
                                          exclude_reference=True)["full"]
    assert [res[f"R@{k}"] for k in (1, 2, 3, 4)] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert res["num_reference_excluded"] == 3
    # w/o img: captions of gallery items are e[1], e[0], e[2], e[3], e[4] -> a and b swap roles:
    # query 0 -> "b"'s caption is e0 (0.9): rank 1; query 1 unchanged order d > a(0.2) > e: rank 3;
    # query 2: all zero -> rank 4.
    cap = composed_recall_from_embeddings({"composed": composed}, gallery, targets, gallery_ids, references,
                                          variants=("w/o img",), ks=(1, 3), exclude_reference=True)["w/o img"]
    assert cap["R@1"] == pytest.approx(1 / 3) and cap["R@3"] == pytest.approx(2 / 3)
    # w/ cap adds both similarities (caption_weight 1)
    both = composed_similarity("w/ cap", gallery["images"], composed=composed, gallery_captions=gallery["captions"])
    assert torch.allclose(both, composed @ e.T + composed @ gallery["captions"].T)
    # the default (the paper's full-split ranking): the reference "c" (query 2's best) outranks the target
    kept = composed_recall_from_embeddings({"composed": composed}, gallery, targets, gallery_ids, references,
                                           ks=(4,), variants=("full",))["full"]
    assert kept["R@4"] == pytest.approx(2 / 3) and kept["num_reference_excluded"] == 0
    with pytest.raises(AtelierInputError, match="needs \\['gallery_captions'\\]"):
        composed_similarity("w/o img", gallery["images"], composed=composed)


def test_cross_modal_recall_matches_library_metrics():
    gen = torch.Generator().manual_seed(7)
    n, per = 24, 2
    images = F.normalize(torch.randn(n, 3, 8, generator=gen), dim=-1)
    text_image = torch.arange(n).repeat_interleave(per)
    texts = F.normalize(images[text_image, 0] + 0.8 * torch.randn(n * per, 8, generator=gen), dim=-1)
    cats = np.arange(n) % 2
    res = cross_modal_recall(images, texts, text_image, categories=cats, ks=(1, 5), num_negatives=6, seed=3,
                             max_entries=100)  # tiny blocks: many chunks
    sim = max_query_similarity(images, texts)
    i2t_pos = [list(range(per * i, per * i + per)) for i in range(n)]
    full = recall_at_k(sim, i2t_pos, ks=(1, 5))
    assert res["image_to_text"]["full"]["R@1"] == full["R@1"] and res["image_to_text"]["full"]["R@5"] == full["R@5"]
    r100 = recall_random100_same_category(sim, cats, cats[text_image.numpy()], i2t_pos, ks=(1, 5), seed=3,
                                          num_negatives=6)
    assert res["image_to_text"]["random100"]["R@1"] == r100["R@1"]
    assert res["image_to_text"]["random100"]["R@5"] == r100["R@5"]
    t2i = recall_random100_same_category(sim.T, cats[text_image.numpy()], cats, text_image, ks=(1, 5), seed=3,
                                         num_negatives=6)
    assert res["text_to_image"]["random100"]["R@1"] == t2i["R@1"]
    assert res["text_to_image"]["full"]["R@1"] == recall_at_k(sim.T, text_image, ks=(1,))["R@1"]
    assert 0 < res["text_to_image"]["full"]["R@1"] < 1  # not a degenerate fixture


# ------------------------------------------------------------------------------------------------
# caption decoder
# ------------------------------------------------------------------------------------------------
CAPTIONS = ["a red striped dress", "shirt in blue with dots", "this coat is green and plain", "sandal, black, checked"]


def test_vocab_tokenizes_and_round_trips():
    vocab = CaptionVocab.build(CAPTIONS, extra_texts=INSTRUCTIONS.values())
    assert tokenize_words("Sandal, Black") == ["sandal", ",", "black"]
    assert detokenize(tokenize_words(CAPTIONS[3])) == CAPTIONS[3]
    ids = vocab.encode_batch(CAPTIONS, max_len=6)
    assert ids.shape == (4, 8) and ids[:, 0].eq(vocab.bos).all()
    assert [vocab.decode(r.tolist()) for r in ids] == CAPTIONS
    assert vocab.decode(vocab.encode_batch(["a zebra dress"], 6)[0].tolist()) == "a <unk> dress"
    assert "professional" in vocab.index


def test_caption_decoder_overfits_four_captions_with_and_without_instruction():
    torch.manual_seed(0)
    vocab = CaptionVocab.build(CAPTIONS, extra_texts=INSTRUCTIONS.values())
    dec = CaptionDecoder(vocab, query_dim=16, num_queries=2, dim=32, num_layers=1, heads=2, num_prefix=2, max_len=8,
                         dropout=0.0, instructions=INSTRUCTIONS)
    q = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(8))
    ids = vocab.encode_batch(CAPTIONS, max_len=8)
    opt = torch.optim.Adam(dec.parameters(), lr=8e-3)
    first = None
    for step in range(100):
        instruction = "fashiongen" if step % 2 else None
        loss = dec.loss(q, ids, instruction)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    assert dec.generate_text(q) == CAPTIONS
    assert dec.generate_text(q, instruction="fashiongen") == CAPTIONS
    sampled = dec.generate(q, strategy="top-k", top_k=3, generator=torch.Generator().manual_seed(0))
    assert sampled.shape[0] == 4 and (sampled == vocab.eos).any(1).all()
    with pytest.raises(AtelierInputError, match="instruction 'polyvore' unknown"):
        dec.generate(q, instruction="polyvore")
    with pytest.raises(AtelierInputError, match="strategy must be"):
        dec.generate(q, strategy="beam")


# ------------------------------------------------------------------------------------------------
# training phases on toy data
# ------------------------------------------------------------------------------------------------
def _toy(n_class=6, per_class=4, seed=0):
    """Images of ``n_class`` classes (features = class prototype + noise) with 2 captions per class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_class).repeat_interleave(per_class)
    protos = torch.randn(n_class, S, C, generator=gen)
    feats = (protos[labels] + 0.3 * torch.randn(len(labels), S, C, generator=gen)).half()
    text_tokens = torch.randn(2 * n_class, L, 384, generator=gen)
    text_mask = torch.ones(2 * n_class, L, dtype=torch.bool)
    text_mask[1::2, 4:] = False
    text_tokens = text_tokens * text_mask[..., None]
    caption_ids = torch.stack([2 * labels, 2 * labels + 1], 1)
    return feats, labels, caption_ids, text_tokens, text_mask


def _itc_eval(model, feats, caption_ids, text_tokens, text_mask):
    with torch.no_grad():
        model.eval()
        emb = model.image_embeds(feats.float())
        txt = model.text_embed(text_tokens[caption_ids[:, 0]], text_mask[caption_ids[:, 0]])
        pos = caption_ids[:, None, 0] == caption_ids[None, :, 0]
        return image_text_contrastive(emb, txt, model.logit_scale(), pos)[0].item()


def test_phase1_qformer_lowers_itc_and_resumes_exactly(tmp_path, monkeypatch):
    feats, labels, caption_ids, text_tokens, text_mask = _toy()
    model = _qformer()
    before = _itc_eval(model, feats, caption_ids, text_tokens, text_mask)
    hist = train_mod.train_phase1_qformer(model, feats, caption_ids, text_tokens, text_mask,
                                          tmp_path / "p1.safetensors", steps=40, batch_size=12, lr=3e-3, warmup=5,
                                          ckpt_every=10, progress=False)
    after = _itc_eval(model, feats, caption_ids, text_tokens, text_mask)
    assert after < 0.6 * before, (before, after)
    assert {"itc", "itm", "itm_acc", "temperature"} <= set(hist[-1])
    reloaded = load_qformer(tmp_path / "p1.safetensors")
    for (name, p), q in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(p, q), name

    # a run killed at step 15 resumes (from its step-10 checkpoint) to the same weights
    real = train_mod.batch_indices

    def crash(n, bs, step, seed):
        if step == 15:
            raise KeyboardInterrupt
        return real(n, bs, step, seed)

    monkeypatch.setattr(train_mod, "batch_indices", crash)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_phase1_qformer(_qformer(), feats, caption_ids, text_tokens, text_mask,
                                       tmp_path / "p1b.safetensors", steps=40, batch_size=12, lr=3e-3, warmup=5,
                                       ckpt_every=10, progress=False)
    monkeypatch.setattr(train_mod, "batch_indices", real)
    resumed = _qformer()
    hist_b = train_mod.train_phase1_qformer(resumed, feats, caption_ids, text_tokens, text_mask,
                                            tmp_path / "p1b.safetensors", steps=40, batch_size=12, lr=3e-3, warmup=5,
                                            ckpt_every=10, progress=False)
    assert [h["loss"] for h in hist_b] == [h["loss"] for h in hist]
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(AtelierInputError, match="caption_ids has values outside"):
        train_mod.train_phase1_qformer(model, feats, caption_ids + 100, text_tokens, text_mask,
                                       tmp_path / "bad.safetensors", steps=2, progress=False)


def test_phase1_captioner_trains_decoder_with_frozen_qformer(tmp_path):
    feats, labels, caption_ids, text_tokens, text_mask = _toy(n_class=3, per_class=2)
    texts = [f"a {c} {p} dress" for c in ("red", "blue", "green") for p in ("plain", "striped")]
    vocab = CaptionVocab.build(texts)
    caption_tokens = vocab.encode_batch(texts, max_len=6)
    qformer = _qformer()
    frozen = {k: v.clone() for k, v in qformer.state_dict().items()}
    torch.manual_seed(0)
    dec = CaptionDecoder(vocab, query_dim=32, num_queries=4, dim=32, num_layers=1, heads=2, num_prefix=1, max_len=6,
                         dropout=0.0)
    hist = train_mod.train_phase1_captioner(qformer, dec, feats, caption_ids[:, :1], caption_tokens,
                                            tmp_path / "cap.safetensors", steps=100, batch_size=6, lr=5e-3, warmup=5,
                                            progress=False)
    assert hist[-1]["loss"] < 0.3 * hist[0]["loss"]
    assert all(torch.equal(frozen[k], v) for k, v in qformer.state_dict().items())
    assert all(p.requires_grad for p in qformer.parameters())  # flags restored
    loaded = load_caption_decoder(tmp_path / "cap.safetensors")
    q = qformer.query_outputs(feats.float())
    assert loaded.generate_text(q) == dec.generate_text(q)
    assert loaded.generate_text(q) == [texts[int(i)] for i in caption_ids[:, 0]]


def test_phase2_composed_training_lowers_eq10_loss(tmp_path):
    feats, labels, caption_ids, text_tokens, text_mask = _toy()
    n_class = int(labels.max()) + 1
    # triplets: reference of class c, target of class (c + 1) % K, modification text = a row per target class
    gen = torch.Generator().manual_seed(9)
    mod_tokens = torch.randn(n_class, L, 384, generator=gen)
    table_tokens = torch.cat([text_tokens, mod_tokens])
    table_mask = torch.cat([text_mask, torch.ones(n_class, L, dtype=torch.bool)])
    ref = torch.arange(len(labels))
    tgt_class = (labels + 1) % n_class
    tgt = tgt_class * 4 + (ref % 4).roll(1)
    mod = len(text_tokens) + tgt_class

    def eq10_itc():  # the deterministic terms of Eq. 10 over the whole toy set
        with torch.no_grad():
            model.eval()
            comp = model.composed_embed(feats[ref].float(), table_tokens[mod], table_mask[mod])
            same = tgt[:, None] == tgt[None, :]
            l1, _ = cir_target_image_itc(comp, model.image_embeds(feats[tgt].float()), model.logit_scale(), same)
            caps = caption_ids[tgt, 0]
            l2 = cir_target_caption_itc(comp, model.text_embed(table_tokens[caps], table_mask[caps]),
                                        model.logit_scale(), same | (caps[:, None] == caps[None, :]))
            return (l1 + l2).item()

    model = _qformer()
    before = eq10_itc()
    hist = train_mod.train_phase2_composed(model, feats, ref, tgt, mod, caption_ids, table_tokens, table_mask,
                                           tmp_path / "p2.safetensors", steps=40, batch_size=12, lr=3e-3, warmup=5,
                                           progress=False)
    after = eq10_itc()
    assert after < 0.7 * before, (before, after)
    assert {"itc_target", "itc_caption", "itm"} <= set(hist[-1])
    assert load_qformer(tmp_path / "p2.safetensors").hparams == model.hparams

    # the model-level evaluation runs end to end and the trained composed query beats text alone
    cats = {"dress": {"reference_feats": feats[ref], "text_tokens": table_tokens[mod], "text_mask": table_mask[mod],
                      "target_ids": [f"i{int(t)}" for t in tgt], "reference_ids": [f"i{int(r)}" for r in ref],
                      "gallery_feats": feats, "gallery_ids": [f"i{i}" for i in range(len(feats))]}}
    res = composed_recall(model, cats, variants=("full", "image only", "text only"), ks=(1, 5))
    assert set(res["summary"]) == {"full", "image only", "text only"}
    assert res["per_category"]["dress"]["full"]["R@5"] >= res["per_category"]["dress"]["image only"]["R@5"]
    assert embed_images(model, feats[:3]).shape == (3, 4, 16)
    assert embed_texts(model, table_tokens[:3], table_mask[:3]).shape == (3, 16)

    # Eq. 11 through a frozen caption decoder: it gets an "itg" term and is left untouched
    words = [f"w{i}" for i in range(len(table_tokens))]
    vocab = CaptionVocab.build(words)
    dec = CaptionDecoder(vocab, query_dim=32, num_queries=4, dim=16, num_layers=1, heads=2, num_prefix=1, max_len=2)
    dec_state = {k: v.clone() for k, v in dec.state_dict().items()}
    hist = train_mod.train_phase2_composed(model, feats, ref, tgt, mod, caption_ids, table_tokens, table_mask,
                                           tmp_path / "p2itg.safetensors", steps=2, batch_size=12, decoder=dec,
                                           caption_tokens=vocab.encode_batch(words, 2), progress=False)
    assert "itg" in hist[-1] and all(torch.equal(dec_state[k], v) for k, v in dec.state_dict().items())
    assert all(p.requires_grad for p in dec.parameters())
    with pytest.raises(AtelierInputError, match="without caption_tokens"):
        train_mod.train_phase2_composed(model, feats, ref, tgt, mod, caption_ids, table_tokens, table_mask,
                                        tmp_path / "p2bad.safetensors", steps=2, decoder=dec, progress=False)


# ------------------------------------------------------------------------------------------------
# frozen image features
# ------------------------------------------------------------------------------------------------
def test_efficientnet_features_shape_and_cache(tmp_path, monkeypatch):
    from lib.retrieval import features

    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    extractor = features.EfficientNetTokens(size=64, out_index=4)
    path = tmp_path / "feats.safetensors"
    first = features.cached_features(images, path, extractor, progress=False)
    assert first.shape == (3, 16, 112) and first.dtype == torch.float16
    direct = extractor(features.images_to_float(images))
    assert torch.allclose(first.float(), direct, atol=1e-2 * direct.abs().max().item())

    def no_recompute(*a, **k):
        raise AssertionError("cache not used")

    monkeypatch.setattr(features, "extract_features", no_recompute)
    assert torch.equal(features.cached_features(images, path, extractor, progress=False), first)
    with pytest.raises(AssertionError, match="cache not used"):  # other images: recomputed
        features.cached_features(images[:2], path, extractor, progress=False)
    with pytest.raises(AtelierInputError, match="multiple of stage 4's stride 16"):
        features.EfficientNetTokens(size=40)


def test_tokenizer_features_are_the_prequantization_latents():
    from lib.models.tokenizer import Tokenizer
    from lib.retrieval.features import extract_features, feature_extractor

    torch.manual_seed(0)
    tok = Tokenizer({"ch": 8, "z_dim": 8, "quantizer_kwargs": {"codebook_size": 16}}).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = extract_features(images, feature_extractor("tokenizer", tokenizer=tok), dtype=torch.float32)
    with torch.no_grad():
        z = tok.encoder(images)
    assert feats.shape == (2, 64, 8) and torch.allclose(feats, z.flatten(2).transpose(1, 2))
    with pytest.raises(AtelierInputError, match="source='tokenizer' needs tokenizer="):
        feature_extractor("tokenizer")


def test_composed_recall_ranks_agree_with_its_recalls():
    """The per-query ranks behind Table 5's bootstrap (lib.evaluation.unifashion.composed_replicates)
    give back exactly the recalls computed from the same similarities."""
    from lib.retrieval.evaluate import composed_recall_from_embeddings

    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(12, 2, 8, generator=g), dim=-1)
    queries = {"composed": F.normalize(torch.randn(6, 8, generator=g), dim=-1)}
    ids = [f"g{i}" for i in range(12)]
    targets = [f"g{i}" for i in (0, 3, 5, 7, 7, 11)]
    res = composed_recall_from_embeddings(queries, {"images": images}, targets, ids, variants=("full",),
                                          ks=(1, 3, 6), return_ranks=True)["full"]
    ranks = np.asarray(res["ranks"])
    assert ranks.shape == (6,) and ranks.min() >= 0 and ranks.max() < 12
    for k in (1, 3, 6):
        assert res[f"R@{k}"] == pytest.approx(float((ranks < k).mean()))
    assert "ranks" not in composed_recall_from_embeddings(queries, {"images": images}, targets, ids, variants=("full",))["full"]
    with pytest.raises(AtelierInputError, match="return_ranks is for the paper's protocol"):
        composed_recall_from_embeddings(queries, {"images": images}, targets, ids, targets, variants=("full",),
                                        exclude_reference=True, return_ranks=True)
