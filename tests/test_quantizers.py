"""Tests of lib.quantizers: the shared contract (shapes, exact decode, straight-through gradients),
what makes each scheme what it is (PQ's K^M code words, MoVQ's single shared codebook, RQ's sums),
the codebook tricks (EMA, k-means init, dead-code restart), equal-storage configs and the factory."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.quantizers import (
    STATS_KEYS,
    Codebook,
    MultichannelQuantizer,
    ProductQuantizer,
    QuantizerOutput,
    ResidualQuantizer,
    VectorQuantizer,
    build_quantizer,
    equal_storage_configs,
)

KINDS = ["vq", "rq", "rq_separate", "pq", "movq"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every tensor here is tiny: intra-op threads only add synchronisation, which costs 10x on a
    loaded 2-core machine. Restored afterwards so other test modules are unaffected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(kind: str, dim: int = 8, **options) -> torch.nn.Module:
    """A small quantizer of each kind (C = 2 for the multi-token kinds)."""
    if kind == "vq":
        return build_quantizer("vq", dim=dim, codebook_size=16, **options)
    if kind == "rq":
        return build_quantizer("rq", dim=dim, codebook_size=8, depth=2, **options)
    if kind == "rq_separate":
        return build_quantizer("rq", dim=dim, codebook_size=8, depth=2, shared_codebook=False, **options)
    if kind == "pq":
        return build_quantizer("pq", dim=dim, codebook_size=8, num_groups=2, **options)
    if kind == "movq":
        return build_quantizer("movq", dim=dim, codebook_size=16, num_chunks=2, **options)
    raise AssertionError(kind)


def expected_channels(kind: str) -> int:
    return 1 if kind == "vq" else 2


# ---------------------------------------------------------------- the shared contract
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, {"ema": True, "kmeans_init": True, "restart_dead": True, "dead_after_steps": 1}])
def test_indices_decode_exactly_to_quantized_in_eval(kind, options):
    q = small(kind, **options)
    z = torch.randn(3, 8, 5, 4)
    q.train()
    for _ in range(3):  # let EMA / k-means / restarts change the codebook first
        q(torch.randn(3, 8, 5, 4))
    q.eval()
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    c = expected_channels(kind)
    assert out.quantized.shape == (3, 8, 5, 4)
    assert out.indices.shape == (3, 5, 4, c)
    assert out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    assert q.num_channels == c
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    decoded = q.decode_indices(out.indices)
    assert decoded.shape == out.quantized.shape
    assert torch.equal(decoded, out.quantized)  # bit for bit, not allclose
    # and the tokens really are nearest-code tokens: re-quantising the decode gives the same tokens
    assert torch.equal(q(decoded).indices, out.indices) or kind.startswith("rq")


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_gradient_reaches_input_and_codebook(kind):
    q = small(kind)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = q(z)
    w = torch.randn_like(out.quantized)
    (out.quantized * w).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # straight-through: d quantized / d z is the identity
    assert torch.allclose(z.grad, w)
    # the codebook is trained by the codebook term of Eq. (3), not by the straight-through path
    for cb in q.codebooks():
        assert cb.weight.grad is None
    z.grad = None
    out = q(z)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0  # commitment term
    assert any(cb.weight.grad is not None and cb.weight.grad.abs().sum() > 0 for cb in q.codebooks())


@pytest.mark.parametrize("kind", KINDS)
def test_stats_keys_and_values(kind):
    q = small(kind)
    out = q(torch.randn(2, 8, 4, 4))
    assert set(out.stats) == set(STATS_KEYS)
    assert all(isinstance(v, float) for v in out.stats.values())
    assert 0 < out.stats["usage"] <= 1
    assert 1 <= out.stats["perplexity"] <= q.codebook_size + 1e-4
    assert out.stats["dead_fraction"] == 0.0
    assert out.stats["quant_mse"] > 0


def test_ema_loss_has_zero_codebook_term():
    q = small("vq", ema=True)
    out = q(torch.randn(2, 8, 4, 4, requires_grad=True))
    assert out.stats["loss_codebook"] == 0.0
    assert out.loss.item() == pytest.approx(0.25 * out.stats["loss_commitment"])
    assert not any(p.requires_grad for p in q.parameters())


def test_distances_are_float32_under_autocast():
    torch.manual_seed(1)
    q = build_quantizer("vq", dim=16, codebook_size=256).eval()
    z = torch.randn(4, 16, 32, 32) * 0.3
    ref = q(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = q(z).indices
    assert torch.equal(ref, under)
    # the check can fail: bf16 distances would pick other codes for some of these vectors
    x = z.permute(0, 2, 3, 1).reshape(-1, 16)
    e = q.codebook.weight.detach()
    bf16 = ((e * e).sum(1) - 2 * (x.bfloat16() @ e.bfloat16().t()).float()).argmin(1)
    assert (bf16 != ref.reshape(-1)).any()


def test_low_precision_input_keeps_dtype():
    q = small("movq").eval()
    z = torch.randn(2, 8, 3, 3).bfloat16()
    out = q(z)
    assert out.quantized.dtype == torch.bfloat16
    assert torch.equal(q.decode_indices(out.indices).bfloat16(), out.quantized)


def test_bad_inputs_are_named():
    q = small("pq")
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        q(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="indices"):
        q.decode_indices(torch.zeros(1, 2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        q.decode_indices(torch.full((1, 2, 2, 2), 8, dtype=torch.long))


# ---------------------------------------------------------------- what makes each scheme
@pytest.mark.parametrize("cls,arg", [(ProductQuantizer, "num_groups"), (MultichannelQuantizer, "num_chunks")])
def test_three_groups_of_three_codes_give_27_distinct_vectors(cls, arg):
    k, m = 3, 3
    q = cls(dim=m, codebook_size=k, **{arg: m}).eval()
    assert q.effective_codebook_size == k**m
    combos = torch.tensor(list(itertools.product(range(k), repeat=m)))  # [27, 3]
    decoded = q.decode_indices(combos.reshape(1, 27, 1, m))  # [1, 3, 27, 1]
    vectors = decoded[0, :, :, 0].t()
    assert len({tuple(v.tolist()) for v in vectors}) == k**m
    # and each of them is its own nearest code word: PQ/MoVQ really has K^M code words
    assert torch.equal(q(decoded).indices.reshape(27, m), combos)


def test_plain_vq_has_only_k_code_words():
    q = VectorQuantizer(dim=3, codebook_size=3).eval()
    out = q(torch.randn(1, 3, 50, 1))
    assert len({tuple(v) for v in out.quantized[0, :, :, 0].t().tolist()}) <= 3
    assert q.effective_codebook_size == 3


def test_movq_chunks_share_one_codebook_pq_groups_do_not():
    movq = MultichannelQuantizer(dim=8, codebook_size=16, num_chunks=4)
    assert len(movq.codebooks()) == 1
    assert sum(p.numel() for p in movq.parameters()) == 16 * 2 == movq.codebook_storage
    zeros = torch.zeros(1, 1, 1, 4, dtype=torch.long)
    before = movq.decode_indices(zeros)
    with torch.no_grad():
        movq.codebook.weight[0] += 1.0
    after = movq.decode_indices(zeros)
    assert (after - before).abs().reshape(4, 2).sum(1).gt(0).all()  # every chunk changed

    pq = ProductQuantizer(dim=8, codebook_size=16, num_groups=4)
    assert len(pq.codebooks()) == 4
    before = pq.decode_indices(zeros)
    with torch.no_grad():
        pq.sub_codebooks[0].weight[0] += 1.0
    changed = (pq.decode_indices(zeros) - before).abs().reshape(4, 2).sum(1).gt(0)
    assert changed.tolist() == [True, False, False, False]


def test_rq_quantized_is_sum_of_depth_codes():
    q = ResidualQuantizer(dim=4, codebook_size=5, depth=3).eval()
    e = q.codebooks()[0].weight.detach()
    idx = torch.tensor([[[[1, 4, 2]]]])
    assert torch.allclose(q.decode_indices(idx)[0, :, 0, 0], e[1] + e[4] + e[2])
    sep = ResidualQuantizer(dim=4, codebook_size=5, depth=3, shared_codebook=False)
    assert len(sep.codebooks()) == 3 and sep.codebook_storage == 3 * 5 * 4


def test_rq_refines_with_depth_after_kmeans_init():
    torch.manual_seed(2)
    z = torch.randn(8, 8, 8, 8)
    errors = []
    for depth in (1, 2, 4):
        q = ResidualQuantizer(dim=8, codebook_size=16, depth=depth, shared_codebook=False, kmeans_init=True)
        q(z)  # k-means on the first training batch, per depth on its residual
        errors.append(q.eval()(z).stats["quant_mse"])
    assert errors[0] > errors[1] > errors[2]


# ---------------------------------------------------------------- codebook tricks
def _far_codebook_quantizer(**options) -> VectorQuantizer:
    """VQ whose 32 codes sit in a tight clump far from N(0, I) data: a few codes take everything."""
    q = VectorQuantizer(dim=4, codebook_size=32, **options)
    q.codebook.set_codes(10.0 + 0.5 * torch.randn(32, 4))
    return q


@pytest.mark.parametrize(
    "criterion", [{"dead_after_steps": 3}, {"dead_after_steps": 10**6, "dead_usage_threshold": 0.2, "usage_decay": 0.7}]
)
@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_revives_unused_codes(criterion, ema):
    q = _far_codebook_quantizer(**criterion, **({"ema": True, "decay": 0.5} if ema else {}))
    data = [torch.randn(4, 4, 8, 8) for _ in range(15)]
    for z in data[:6]:
        out = q(z)
    assert out.stats["dead_fraction"] > 0.7  # most codes never win
    assert out.stats["usage"] < 0.3
    q.codebook.restart_dead = True
    restarted = [q(data[6]).stats["restarted"]]
    assert restarted[0] > 20
    assert not q.codebook.dead_mask().any()  # restarted codes start afresh, not dead on arrival
    if ema:  # the next EMA update must not undo the restart: codes == EMA sum / EMA count
        cb = q.codebook
        assert torch.allclose(cb.weight, cb.ema_sum / cb.ema_count[:, None], rtol=1e-2, atol=1e-4)
    restarted += [q(z).stats["restarted"] for z in data[7:9]]
    later = [q(z).stats for z in data[9:]]
    # revived codes stay alive: no recurring mass restarts, (almost) no dead codes
    assert max(s["dead_fraction"] for s in later) < 0.15
    assert max(s["restarted"] for s in later) < 4  # an occasional under-used code is fine
    assert min(s["usage"] for s in later) > 0.8
    # the codes sit among the data (with EMA, a restart also resets the code's EMA statistics)
    assert q.codebook.weight.abs().max() < 15


def test_no_restart_without_flag_and_not_in_eval():
    q = _far_codebook_quantizer(dead_after_steps=1, restart_dead=True)
    before = q.codebook.weight.detach().clone()
    q.eval()
    for _ in range(3):
        out = q(torch.randn(2, 4, 4, 4))
    assert out.stats["restarted"] == 0.0
    assert torch.equal(q.codebook.weight, before)


def test_ema_moves_assigned_code_toward_its_vectors_only():
    cb = Codebook(4, 2, ema=True, decay=0.5)
    cb.set_codes(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    target = torch.tensor([2.0, 1.0])
    x = target + 0.1 * torch.randn(256, 2)
    dist = [(cb.weight[0] - x.mean(0)).norm().item()]
    for _ in range(6):
        out = cb(x)
        assert out.indices.eq(0).all()
        dist.append((cb.weight[0] - x.mean(0)).norm().item())
    assert all(a > b for a, b in zip(dist, dist[1:]))
    assert dist[-1] < 0.1
    assert torch.allclose(cb.weight[1:], torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]), atol=1e-2)
    assert out.codebook_loss.item() == 0.0


def test_ema_codebook_is_not_changed_in_eval():
    cb = Codebook(4, 2, ema=True).eval()
    before = cb.weight.clone()
    cb(torch.randn(64, 2))
    assert torch.equal(cb.weight, before)


def test_kmeans_init_places_codes_on_clusters():
    # 8 well-separated clusters and 8 codes: random seeding would almost surely put two codes in
    # one cluster and none in another (P(one per cluster) = 8!/8^8 < 0.3%); k-means++ does not.
    centres = 5.0 * torch.cat([torch.eye(4), -torch.eye(4)])
    x = (centres[:, None, :] + 0.05 * torch.randn(8, 100, 4)).reshape(-1, 4)
    x = x[torch.randperm(x.shape[0])]
    cb = Codebook(8, 4, kmeans_init=True, kmeans_iters=5)
    cb.eval()
    cb(x)  # eval: no initialisation
    assert not bool(cb.initialized)
    cb.train()
    out = cb(x)
    assert bool(cb.initialized)
    dist = torch.cdist(centres, cb.weight.detach())
    assert dist.min(1).values.max() < 0.05  # every cluster has a code on it
    assert dist.min(0).values.max() < 0.05  # every code is on a cluster
    assert out.stats["usage"] == 1.0
    # only the first training batch initialises
    before = cb.weight.detach().clone()
    cb(torch.randn(50, 4))
    assert torch.equal(cb.weight.detach(), before)


def test_state_dict_round_trip_keeps_codes_and_skips_kmeans():
    q = small("pq", kmeans_init=True)
    z = torch.randn(2, 8, 4, 4)
    q(z)  # k-means on this first training batch
    fresh = small("pq", kmeans_init=True)
    fresh.load_state_dict(q.state_dict())
    q.eval(), fresh.eval()
    assert torch.equal(fresh(z).quantized, q(z).quantized)
    fresh.train()
    fresh(torch.randn(2, 8, 4, 4) * 100)  # k-means again would move the codes to this batch
    idx = torch.randint(8, (1, 3, 3, 2))
    assert torch.equal(fresh.decode_indices(idx), q.decode_indices(idx))


# ---------------------------------------------------------------- ablation grid and factory
def test_equal_storage_configs_really_are_equal():
    configs = equal_storage_configs()
    assert set(configs) == {"vq", "rq", "pq", "movq"}
    built = {k: build_quantizer(k, **cfg) for k, cfg in configs.items()}
    assert {q.codebook_storage for q in built.values()} == {1024 * 64}
    assert all(q.dim == 64 for q in built.values())
    assert [built[k].num_channels for k in ("vq", "rq", "pq", "movq")] == [1, 4, 4, 4]
    assert [built[k].codebook_size for k in ("vq", "rq", "pq", "movq")] == [1024, 256, 1024, 4096]
    # storage = what is actually stored: parameter count of gradient-trained codebooks
    for q in built.values():
        assert sum(p.numel() for p in q.parameters()) == q.codebook_storage
    shared = equal_storage_configs(rq_shared_codebook=True, ema=True)
    rq = build_quantizer("rq", **shared["rq"])
    assert rq.codebook_storage == 1024 * 64 and rq.codebook_size == 1024
    assert all(cfg["ema"] for cfg in shared.values())
    small_grid = {k: build_quantizer(k, **c).codebook_storage for k, c in equal_storage_configs(64, 16, 2).items()}
    assert set(small_grid.values()) == {64 * 16}


def test_equal_storage_configs_reject_indivisible_sizes():
    with pytest.raises(ValueError, match="channels"):
        equal_storage_configs(dim=66)
    with pytest.raises(ValueError, match="vq_codebook_size"):
        equal_storage_configs(vq_codebook_size=1022)
    with pytest.raises(ValueError, match="bogus"):
        equal_storage_configs(bogus=1)


def test_factory_builds_each_kind_and_num_channels_alias():
    assert isinstance(build_quantizer("VQ", dim=8, codebook_size=4), VectorQuantizer)
    assert build_quantizer("rq", dim=8, codebook_size=4, num_channels=3).depth == 3
    assert build_quantizer("pq", dim=8, codebook_size=4, num_channels=4).num_groups == 4
    assert build_quantizer("movq", dim=8, codebook_size=4, num_channels=2).num_chunks == 2


@pytest.mark.parametrize(
    "kind,kw,name",
    [
        ("xq", {"dim": 8, "codebook_size": 4}, "'xq'"),
        ("vq", {"dim": 8, "codebook_size": 4, "decya": 0.9}, "decya"),
        ("pq", {"dim": 8, "codebook_size": 4, "num_chunks": 2}, "num_chunks"),
        ("pq", {"dim": 8, "codebook_size": 4, "num_groups": 3}, "num_groups"),
        ("movq", {"dim": 8, "codebook_size": 4, "num_chunks": 3}, "num_chunks"),
        ("rq", {"dim": 8, "codebook_size": 0}, "codebook_size"),
        ("rq", {"dim": 8, "codebook_size": 4, "depth": 0}, "depth"),
        ("vq", {"dim": 8, "codebook_size": 4, "decay": 1.5}, "decay"),
        ("vq", {"dim": 8, "codebook_size": 4, "dead_usage_threshold": 1.0}, "dead_usage_threshold"),
        ("vq", {"dim": 8, "codebook_size": 4, "num_channels": 2}, "num_channels"),
        ("rq", {"dim": 8, "codebook_size": 4, "num_channels": 2, "depth": 2}, "num_channels"),
        ("movq", {"codebook_size": 4}, "dim"),
    ],
)
def test_factory_errors_name_the_bad_parameter(kind, kw, name):
    with pytest.raises(ValueError, match=name):
        build_quantizer(kind, **kw)


def test_direct_construction_rejects_unknown_codebook_option():
    with pytest.raises(ValueError, match="kmeans_inti"):
        MultichannelQuantizer(dim=8, codebook_size=4, kmeans_inti=True)


# ---------------------------------------------------------------- in a training loop
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ema", [False, True])
def test_tiny_autoencoder_with_quantizer_learns_to_reconstruct(kind, ema):
    torch.manual_seed(3)
    prototypes = torch.randn(12, 8)
    x = prototypes[torch.randint(12, (4 * 4 * 4,))].reshape(4, 4, 4, 8).permute(0, 3, 1, 2).contiguous()
    enc, dec = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
    q = small(kind, ema=ema)
    params = [*enc.parameters(), *dec.parameters(), *q.parameters()]

    def recon_loss() -> float:
        q.eval()
        with torch.no_grad():
            loss = F.mse_loss(dec(q(enc(x)).quantized), x).item()
        q.train()
        return loss

    start = recon_loss()
    # Hand-written SGD: torch.optim's first step imports torch._dynamo, ~10 s on a loaded machine.
    for _ in range(150):
        out = q(enc(x))
        loss = F.mse_loss(dec(out.quantized), x) + out.loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= 0.2 * g
    end = recon_loss()
    assert end < 0.5 * start, (start, end)
