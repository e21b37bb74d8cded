"""Samplers (lib.sampling): schedules, invariants, guidance, filtering, editing builders.

No model is involved: every test uses a fake ``logits_fn`` (fixed random logits, logits that depend
on the input tokens, or logits whose argmax is a fixed target grid).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lib.io import AtelierInputError
from lib.sampling import (AutoregressiveScheduler, ClassifierFreeGuidance, LinearGuidanceSchedule, MaskGITScheduler,
                          SMARTScheduler, blank_grid, box_mask, filter_logits, guided_logits, inpaint,
                          mask_free_edit, outpaint, paste_region, sample, sample_autoregressive, style_mix)

torch.set_num_threads(1)

K = 16


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # torch.testing.assert_close costs ~5 s of lazy imports on first use
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), float((a - b).abs().max())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def token_dependent_fn(n: int, c: int, k: int = K, seed: int = 1, scale: float = 1.0):
    """Logits that depend on the input tokens (mask id included) and on the entry's place."""
    g = gen(seed)
    table = torch.randn(k + 1, k, generator=g) * scale
    pos = torch.randn(n, c, k, generator=g) * scale

    def fn(tokens):
        ctx = table[tokens].mean(dim=(1, 2), keepdim=True)  # every entry sees every other entry
        return pos[None] + table[tokens] + ctx

    return fn


def target_fn(target: torch.Tensor, k: int = K, margin: float = 8.0):
    """argmax is ``target`` whatever the input; the runner-up logits still depend on the input."""
    noise = token_dependent_fn(target.shape[1], target.shape[2], k, seed=7, scale=0.3)

    def fn(tokens):
        return margin * F.one_hot(target, k).float() + noise(tokens)

    return fn


def random_known(b: int, n: int, c: int, rates, seed: int = 3) -> torch.Tensor:
    u = torch.rand(b, n, c, generator=gen(seed))
    return u < torch.tensor(rates, dtype=torch.float)[:, None, None]


def run(sched, fn, tokens, known, generator=None):
    state = sched.init_state(tokens, known, K)
    states = [state]
    for t in range(sched.num_steps):
        state = sched.step(fn(state.tokens), t, state, generator=generator)
        states.append(state)
    return states


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("make, name", [
    (lambda: MaskGITScheduler(num_steps=0), "num_steps"),
    (lambda: SMARTScheduler(num_steps=0), "num_steps"),
    (lambda: SMARTScheduler(alpha=0.2, beta=0.5), "alpha"),
    (lambda: SMARTScheduler(alpha=1.5, beta=0.2), "alpha"),
    (lambda: SMARTScheduler(beta=-0.1), "beta"),
    (lambda: MaskGITScheduler(temperature=-1.0), "temperature"),
    (lambda: MaskGITScheduler(choice_temperature=float("nan")), "choice_temperature"),
    (lambda: MaskGITScheduler(schedule="arccos"), "schedule"),
    (lambda: LinearGuidanceSchedule(-1.0, 5), "max_scale"),
    (lambda: AutoregressiveScheduler(0), "num_tokens"),
    (lambda: AutoregressiveScheduler(4, top_k=0), "top_k"),
    (lambda: filter_logits(torch.zeros(2, 4), top_p=1.5), "top_p"),
    (lambda: filter_logits(torch.zeros(2, 4), top_p=0.0), "top_p"),
    (lambda: ClassifierFreeGuidance(lambda x: x, None), "uncond_fn"),
    (lambda: ClassifierFreeGuidance(lambda x: x, lambda x: x, batched=True), "uncond_fn"),
])
def test_constructor_errors_name_the_parameter(make, name):
    with pytest.raises(AtelierInputError, match=name):
        make()


def test_step_and_state_errors_name_the_argument():
    sched = MaskGITScheduler(num_steps=4)
    tokens = torch.zeros(2, 9, 3, dtype=torch.long)
    known = torch.zeros(2, 9, 3, dtype=torch.bool)
    state = sched.init_state(tokens, known, K)
    with pytest.raises(AtelierInputError, match="logits"):
        sched.step(torch.zeros(2, 9, 3, K + 1), 0, state)  # K+1 classes: mask id would be samplable
    with pytest.raises(AtelierInputError, match="logits"):
        sched.step(torch.zeros(2, 9, K), 0, state)
    with pytest.raises(AtelierInputError, match="t must"):
        sched.step(torch.zeros(2, 9, 3, K), 4, state)
    with pytest.raises(AtelierInputError, match="known"):
        sched.init_state(tokens, known[:, :4], K)
    with pytest.raises(AtelierInputError, match="known"):
        sched.init_state(tokens, known.long(), K)
    with pytest.raises(AtelierInputError, match="tokens"):
        sched.init_state(torch.full((2, 9, 3), K), ~known, K)  # a known entry holding the mask id
    with pytest.raises(AtelierInputError, match="tokens"):
        sched.init_state(tokens[0], known[0], K)
    with pytest.raises(AtelierInputError, match="mask_id"):
        sched.init_state(tokens, known, 0)


# ---------------------------------------------------------------- MaskGIT

def test_maskgit_counts_follow_the_cosine_schedule_per_row():
    b, n, c, steps = 3, 64, 4, 12
    known = random_known(b, n, c, [0.0, 0.25, 0.6])
    known[0] = False
    tokens = torch.randint(0, K, (b, n, c), generator=gen(4))
    sched = MaskGITScheduler(num_steps=steps)
    states = run(sched, token_dependent_fn(n, c), tokens, known, generator=gen(5))
    u = (~known).flatten(1).sum(1)
    assert int(u[0]) == 256
    planned = sched.planned_masked(u)
    # the paper's count at every step but the last for the row without known entries (no clamping at U=256)
    for t in range(steps - 1):
        assert int(planned[0, t]) == math.floor(math.cos(math.pi / 2 * (t + 1) / steps) * 256)
    assert sched.schedule(256) == planned[0].tolist()
    prev = states[0]
    for t, state in enumerate(states[1:]):
        masked = state.num_masked()
        assert torch.equal(masked, planned[:, t]), t
        assert bool((masked <= prev.num_masked()).all())
        # already revealed entries stay, known entries never change
        revealed_before = ~prev.masked
        assert torch.equal(state.tokens[revealed_before], prev.tokens[revealed_before])
        assert torch.equal(state.tokens[known], tokens[known])
        prev = state
    assert not bool(states[-1].masked.any())
    assert int(states[-1].tokens.max()) < K


def test_maskgit_clamps_and_linear_schedule():
    sched = MaskGITScheduler(num_steps=12)
    small = sched.schedule(5)  # floor(cos)*5 would stall at 4: one new entry per step is forced
    # ... and, as google-research/maskgit does, the last entry stays masked until the last step
    assert small == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert sched.schedule(1) == [1] * 11 + [0]
    assert sched.schedule(0) == [0] * 12
    lin = MaskGITScheduler(num_steps=8, schedule="linear")
    assert lin.schedule(100)[:-1] == [math.floor((1 - (t + 1) / 8) * 100) for t in range(7)]
    assert lin.schedule(100)[-1] == 0
    sched.set_timesteps(3)
    assert sched.num_steps == 3 and len(sched.schedule(50)) == 3
    with pytest.raises(AtelierInputError, match="num_steps"):
        sched.set_timesteps(0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("make", [lambda T: MaskGITScheduler(num_steps=6, temperature=T),
                                  lambda T: SMARTScheduler(num_steps=6, temperature=T)])
def test_known_entries_survive_adversarial_logits(make, temperature):
    b, n, c = 4, 25, 2
    tokens = torch.randint(0, K, (b, n, c), generator=gen(8))
    known = random_known(b, n, c, [0.1, 0.5, 0.9, 1.0])

    def adversarial(x):  # every entry, known or not, strongly prefers another token than the given one
        return 50.0 * F.one_hot((tokens + 1) % K, K).float() + 0.01 * x[..., None].float()

    states = run(make(temperature), adversarial, tokens, known, generator=gen(9))
    final = states[-1].tokens
    assert torch.equal(final[known], tokens[known])
    assert not bool((final == K).any())
    assert torch.equal(final[~known], ((tokens + 1) % K)[~known])  # the rest did follow the logits
    for s in states:
        assert torch.equal(s.tokens[known], tokens[known])


def test_gumbel_noise_is_finite_and_standard():
    from lib.sampling.base import gumbel_noise

    g = gumbel_noise((20000,), gen(40), "cpu")
    assert bool(torch.isfinite(g).all())
    assert abs(float(g.mean()) - 0.5772) < 0.03  # Euler-Mascheroni constant
    assert abs(float(g.var()) - math.pi ** 2 / 6) < 0.1


def test_sample_categorical_matches_the_softmax_and_never_draws_minus_inf():
    from lib.sampling.base import sample_categorical

    logits = torch.tensor([0.0, math.log(3.0), float("-inf"), math.log(6.0)])  # p = 0.1, 0.3, 0, 0.6
    n = 20000
    draws = sample_categorical(logits.expand(n, 4), 1.0, torch.Generator().manual_seed(0))
    assert draws.shape == (n,) and draws.dtype == torch.long
    freq = torch.bincount(draws, minlength=4).float() / n
    assert freq[2] == 0
    # 4 standard errors of a binomial share at n = 20000 is < 0.015
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.0, 0.6]), atol=0.015), freq
    # temperature 2 flattens: p ~ sqrt of the above, renormalised
    hot = sample_categorical(logits.expand(n, 4), 2.0, torch.Generator().manual_seed(1))
    want = torch.tensor([0.1, 0.3, 0.0, 0.6]).sqrt()
    assert torch.allclose(torch.bincount(hot, minlength=4).float() / n, want / want.sum(), atol=0.015)
    # a row whose only finite logit is the last entry always draws it (the u < total guard)
    last = torch.full((64, 5), float("-inf"))
    last[:, -1] = 0.0
    assert bool((sample_categorical(last, 1.0, torch.Generator().manual_seed(2)) == 4).all())
    assert sample_categorical(logits.expand(2, 3, 4), 0.0).tolist() == [[3, 3, 3], [3, 3, 3]]


def test_maskgit_reveals_the_most_confident_entries():
    b, n, c = 2, 30, 2
    logits = torch.randn(b, n, c, K, generator=gen(41)) * 3
    sched = MaskGITScheduler(num_steps=4, temperature=0.0, choice_temperature=0.0)
    state = sched.init_state(torch.zeros(b, n, c, dtype=torch.long), torch.zeros(b, n, c, dtype=torch.bool), K)
    state = sched.step(logits, 0, state)
    reveal = n * c - sched.schedule(n * c)[0]
    conf = torch.softmax(logits, -1).max(-1).values.view(b, -1)
    top = torch.zeros(b, n * c, dtype=torch.bool).scatter_(1, conf.topk(reveal, dim=1).indices, True)
    assert torch.equal(~state.masked.view(b, -1), top)
    assert torch.equal(state.tokens[~state.masked], logits.argmax(-1)[~state.masked])
    # with annealed Gumbel noise the revealed set is random but still favours confident entries
    noisy = MaskGITScheduler(num_steps=4, choice_temperature=4.5)
    state = noisy.init_state(torch.zeros(b, n, c, dtype=torch.long), torch.zeros(b, n, c, dtype=torch.bool), K)
    state = noisy.step(logits, 0, state, generator=gen(42))
    assert int(state.num_masked()[0]) == noisy.schedule(n * c)[0]
    assert not torch.equal(~state.masked.view(b, -1), top)


# ---------------------------------------------------------------- SMART

def test_smart_remask_counts_follow_the_formula():
    sched = SMARTScheduler(num_steps=11, alpha=0.8, beta=0.2)  # T = 10 iterations after the first prediction
    assert sched.num_iterations == 10
    plan = sched.schedule(64)
    assert len(plan) == 11 and plan[-1] == 0
    assert plan[0] == round(64 * 0.8) == 51  # n(1) = N * alpha
    assert plan[9] == round(64 * 0.2) == 13  # n(T) = N * beta
    for t in range(1, 11):
        assert plan[t - 1] == math.floor(64 * (0.2 + (10 - t) / 9 * (0.8 - 0.2)) + 0.5), t
    assert plan == sorted(plan, reverse=True)
    assert SMARTScheduler(num_steps=2, alpha=0.5, beta=0.1).schedule(10) == [5, 0]  # T = 1: n(1) = alpha N
    assert SMARTScheduler(num_steps=1).schedule(10) == [0]
    with pytest.raises(AtelierInputError, match="t must"):
        sched.remask_ratio(0)


def test_smart_run_matches_plan_and_self_corrects():
    b, n, c = 3, 16, 4
    known = random_known(b, n, c, [0.0, 0.3, 0.7])
    known[0] = False
    tokens = torch.randint(0, K, (b, n, c), generator=gen(10))
    sched = SMARTScheduler(num_steps=11)
    states = run(sched, token_dependent_fn(n, c), tokens, known, generator=gen(11))
    u = (~known).flatten(1).sum(1)
    assert int(u[0]) == 64
    assert torch.equal(states[0].masked, ~known)  # the first call sees every unknown entry masked
    for t, state in enumerate(states[1:]):
        expected = sched.remask_count(t + 1, u) if t < 10 else torch.zeros_like(u)
        assert torch.equal(state.num_masked(), expected), t
        assert torch.equal(state.tokens[known], tokens[known])
        assert not bool((state.masked & known).any())
        assert not bool((state.predicted == K).any())  # every predict step fills every masked entry
    assert [int(s.num_masked()[0]) for s in states[1:]] == sched.schedule(64)
    assert not bool(states[-1].masked.any())
    # self-correction: entries kept after one iteration can be re-masked in a later one
    kept_then_remasked = (~states[1].masked & ~known) & states[2].masked
    assert bool(kept_then_remasked.any())


def test_smart_keeps_confident_entries_preferentially():
    b, n, c = 4, 64, 1
    confident = torch.zeros(b, n, c, dtype=torch.bool)
    confident[:, ::2] = True
    peaked = 40.0 * F.one_hot(torch.zeros(b, n, c, dtype=torch.long), K).float()

    def fn(x):  # half the entries are certain (p ~ 1), half uniform (p = 1/K)
        return torch.where(confident[..., None], peaked, torch.zeros_like(peaked))

    sched = SMARTScheduler(num_steps=11, alpha=0.8)
    state = sched.init_state(torch.zeros(b, n, c, dtype=torch.long), torch.zeros(b, n, c, dtype=torch.bool), K)
    state = sched.step(fn(state.tokens), 0, state, generator=gen(12))
    kept = ~state.masked
    assert int(kept.sum()) == b * (64 - 51)
    share = (kept & confident).sum() / kept.sum()
    assert float(share) > 0.8  # Multinomial(p) keeps: weight 1 vs 1/16


@pytest.mark.parametrize("temperature", [0.0, 1e-4])
@pytest.mark.parametrize("make", [lambda T: MaskGITScheduler(num_steps=8, temperature=T),
                                  lambda T: SMARTScheduler(num_steps=8, temperature=T),
                                  lambda T: MaskGITScheduler(num_steps=3, temperature=T, schedule="linear")])
def test_samplers_reproduce_an_argmax_target_at_zero_temperature(make, temperature):
    b, n, c = 2, 36, 3
    target = torch.randint(0, K, (b, n, c), generator=gen(13))
    given = torch.randint(0, K, (b, n, c), generator=gen(14))
    known = random_known(b, n, c, [0.0, 0.4])
    final, _ = sample(target_fn(target), make(temperature), given, known, K, generator=gen(15))
    assert torch.equal(final, torch.where(known, given, target))


# ---------------------------------------------------------------- guidance

def test_zero_guidance_is_exactly_the_conditional_logits():
    l_c = torch.randn(2, 9, 3, K)
    l_u = torch.full_like(l_c, float("inf"))  # 0 * inf would be nan if Eq. 1 were evaluated
    assert torch.equal(guided_logits(l_c, l_u, 0.0), l_c)
    calls = []
    cfg = ClassifierFreeGuidance(lambda x: l_c, lambda x: calls.append(1) or l_u, schedule=0.0)
    assert torch.equal(cfg(torch.zeros(2, 9, 3, dtype=torch.long)), l_c)
    assert calls == []  # the unconditional branch is skipped at scale 0
    l_u = torch.randn_like(l_c)
    assert_close(guided_logits(l_c, l_u, 3.0), 4.0 * l_c - 3.0 * l_u)


def test_negative_prompt_changes_only_the_unconditional_term():
    g = gen(16)
    l_c, l_u, l_neg = (torch.randint(-20, 20, (2, 9, 3, K), generator=g).float() for _ in range(3))
    scale = 2.0  # integers and a power of two: every product and difference below is exact
    diff = guided_logits(l_c, l_neg, scale) - guided_logits(l_c, l_u, scale)
    assert torch.equal(diff, -scale * (l_neg - l_u))
    x = torch.zeros(2, 9, 3, dtype=torch.long)
    plain = ClassifierFreeGuidance(lambda t: l_c, lambda t: l_u, schedule=scale)
    negative = ClassifierFreeGuidance(lambda t: l_c, lambda t: l_neg, schedule=scale)
    assert torch.equal(negative(x) - plain(x), -scale * (l_neg - l_u))


def test_batched_guidance_equals_two_calls():
    b, n, c = 3, 10, 2
    g = gen(17)
    emb = torch.randn(K + 1, K, generator=g)
    cond_emb = torch.randn(5, K, generator=g)  # row 0 = the null (unconditional) condition

    def model(tokens, cond_ids):  # a conditional fake: every logit depends on tokens and condition
        return emb[tokens] + cond_emb[cond_ids][:, None, None, :] * (1 + tokens[..., None].float())

    cond = torch.tensor([1, 2, 3])
    null = torch.zeros(b, dtype=torch.long)
    schedule = LinearGuidanceSchedule(4.0, 5)
    two = ClassifierFreeGuidance(lambda x: model(x, cond), lambda x: model(x, null), schedule)
    one = ClassifierFreeGuidance.from_batched(lambda x2: model(x2, torch.cat([cond, null])), schedule)
    tokens = torch.randint(0, K + 1, (b, n, c), generator=g)
    for t in range(5):
        two.set_step(t)
        one.set_step(t)
        expected = (1 + t) * model(tokens, cond) - t * model(tokens, null)
        assert_close(one(tokens), two(tokens))
        assert_close(two(tokens), expected)
    bad = ClassifierFreeGuidance.from_batched(lambda x2: model(x2[:b], cond), 1.0)
    with pytest.raises(AtelierInputError, match="2B"):
        bad(tokens)


def test_linear_guidance_schedule_and_step_requirement():
    sched = LinearGuidanceSchedule(4.0, 5)
    assert [sched(t) for t in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert LinearGuidanceSchedule(3.0, 1)(0) == 3.0
    with pytest.raises(AtelierInputError, match="t must"):
        sched(5)
    cfg = ClassifierFreeGuidance(lambda x: x, lambda x: x, sched)
    with pytest.raises(AtelierInputError, match="set_step"):
        cfg(torch.zeros(1, 1, 1))


def test_pipeline_tells_the_guidance_its_step():
    b, n, c, steps = 2, 16, 2, 6
    seen = []
    schedule = LinearGuidanceSchedule(2.0, steps)

    def recording(t):
        seen.append(t)
        return schedule(t)

    base = token_dependent_fn(n, c)
    cfg = ClassifierFreeGuidance(base, lambda x: base(x) * 0.5, recording)
    tokens, known = blank_grid(b, n, c, K)
    final, frames = sample(cfg, MaskGITScheduler(num_steps=steps), tokens, known, K, generator=gen(18),
                           keep_frames=True, progress=True)
    assert seen == list(range(steps))
    assert len(frames) == steps and torch.equal(frames[-1], final)
    assert not bool((final == K).any())


# ---------------------------------------------------------------- autoregressive

def test_filter_logits_keeps_exactly_the_expected_sets():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3],
                          [0.3, 0.15, 0.05, 0.5]])  # the same distribution, permuted
    logits = probs.log()

    def kept(**kw):
        out = filter_logits(logits, **kw)
        return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in out]

    assert kept(top_k=2) == [{1, 3}, {0, 3}]
    assert kept(top_k=1) == [{1}, {3}]
    assert kept(top_k=10) == [{0, 1, 2, 3}] * 2
    assert kept(top_p=0.75) == [{1, 3}, {0, 3}]
    assert kept(top_p=0.85) == [{1, 2, 3}, {0, 1, 3}]
    assert kept(top_p=0.01) == [{1}, {3}]  # at least one token survives
    assert kept(top_p=1.0) == [{0, 1, 2, 3}] * 2
    # top-k first, then the nucleus of the renormalised survivors: 0.5 / 0.8 = 0.625 >= 0.6
    assert kept(top_k=2, top_p=0.6) == [{1}, {3}]
    assert kept(top_p=0.6) == [{1, 3}, {0, 3}]  # without top-k, 0.5 < 0.6 keeps the runner-up
    out = filter_logits(logits, top_k=2)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # survivors unchanged


def test_autoregressive_scheduler_fills_entries_in_raster_channel_minor_order():
    b, n, c = 2, 6, 2
    table = torch.randn(n * c, K, generator=gen(19))
    given = torch.randint(0, K, (b, n, c), generator=gen(20))
    known = torch.zeros(b, n, c, dtype=torch.bool)
    known[:, 2, 1] = True  # flat entry 5
    sched = AutoregressiveScheduler(n * c, temperature=1.0, top_k=1)
    state = sched.init_state(given, known, K)
    for t in range(n * c):
        logits = table[t].expand(b, K)
        state = sched.step(logits, t, state, generator=gen(t))
        flat = state.tokens.view(b, -1)
        assert not bool((flat[:, : t + 1] == K).any())
        assert bool((flat[:, t + 1:] == K).logical_or(known.view(b, -1)[:, t + 1:]).all())
        expected = given[:, 2, 1] if t == 5 else table[t].argmax().expand(b)
        assert torch.equal(flat[:, t], expected), t
    assert sched.schedule(n * c) == list(range(n * c - 1, -1, -1))
    # a full [B,N,C,K] prediction is read at entry t
    state = sched.init_state(given, torch.zeros_like(known), K)
    full = torch.randn(b, n, c, K, generator=gen(21))
    state = sched.step(full, 3, state)
    assert torch.equal(state.tokens[:, 1, 1], full[:, 1, 1].argmax(-1))
    with pytest.raises(AtelierInputError, match="num_tokens"):
        AutoregressiveScheduler(5).init_state(given, known, K)


def test_sample_autoregressive_drives_a_kv_cache_model():
    b, n, c = 2, 4, 3
    appended = []

    def start(first):
        return [first]

    def next_logits(cache):  # the next token is (last + 1) mod K, strongly
        return 30.0 * F.one_hot((cache[-1] + 1) % K, K).float()

    def append(cache, token):
        appended.append(token.clone())
        return cache + [token]

    given = torch.zeros(b, n, c, dtype=torch.long)
    known = torch.zeros(b, n, c, dtype=torch.bool)
    given[:, 2, 0] = torch.tensor([9, 3])
    known[:, 2, 0] = True  # flat entry 6: the chain restarts from the known token
    sched = AutoregressiveScheduler(n * c, temperature=1.0, top_k=3)
    tokens, frames = sample_autoregressive(next_logits, append, start(torch.tensor([0, 5])), sched, given, known, K,
                                           generator=gen(22), keep_frames=True)
    flat = tokens.view(b, -1)
    assert flat[0].tolist() == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14]
    assert flat[1].tolist() == [6, 7, 8, 9, 10, 11, 3, 4, 5, 6, 7, 8]
    assert len(appended) == n * c - 1 and torch.equal(torch.stack(appended, 1), flat[:, :-1])
    assert len(frames) == n * c and torch.equal(frames[-1], tokens)


# ---------------------------------------------------------------- pipeline

def test_pipeline_frames_tokens_and_predictions():
    b, n, c = 2, 16, 2
    tokens, known = blank_grid(b, n, c, K)
    fn = token_dependent_fn(n, c)
    final, frames = sample(fn, SMARTScheduler(num_steps=5), tokens, known, K, generator=gen(23), keep_frames=True)
    assert len(frames) == 5 and torch.equal(frames[-1], final)
    assert [int((f == K).sum()) // b for f in frames] == SMARTScheduler(num_steps=5).schedule(n * c)
    _, predicted = sample(fn, SMARTScheduler(num_steps=5), tokens, known, K, generator=gen(23), keep_frames=True,
                          frames_of="predicted")
    assert all(not bool((f == K).any()) for f in predicted)
    assert torch.equal(predicted[-1], final)  # same generator: the same run
    _, none = sample(fn, MaskGITScheduler(num_steps=3), tokens, known, K)
    assert none == []
    with pytest.raises(AtelierInputError, match="frames_of"):
        sample(fn, MaskGITScheduler(), tokens, known, K, frames_of="images")


# ---------------------------------------------------------------- editing

def test_box_mask_inpaint_and_outpaint():
    h, w = 4, 5
    inside = box_mask(h, w, (1, 2, 2, 3)).view(h, w)
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[1:3, 2:5] = True
    assert torch.equal(inside, expected)
    union = box_mask(h, w, [(0, 0, 1, 1), (3, 4, 1, 1)])
    assert torch.nonzero(union).flatten().tolist() == [0, 19]
    with pytest.raises(AtelierInputError, match="boxes"):
        box_mask(h, w, (3, 0, 2, 1))  # runs off the grid

    tokens = torch.randint(0, K, (2, h * w, 3), generator=gen(24))
    t_in, known_in = inpaint(tokens, (1, 2, 2, 3), grid_size=(h, w), mask_id=K)
    assert torch.equal(known_in, (~expected.flatten())[None, :, None].expand(2, h * w, 3))
    assert torch.equal(t_in[known_in], tokens[known_in]) and bool((t_in[~known_in] == K).all())
    t_out, known_out = outpaint(tokens, expected, grid_size=(h, w))
    assert torch.equal(known_out, expected.flatten()[None, :, None].expand(2, h * w, 3))
    assert torch.equal(t_out, tokens)
    per_row = torch.zeros(2, h * w, dtype=torch.bool)
    per_row[1, 7] = True
    _, known_rows = inpaint(tokens, per_row, grid_size=(h, w))
    assert int((~known_rows).sum()) == 3 and bool((~known_rows[1, 7]).all())
    with pytest.raises(AtelierInputError, match="grid_size"):
        inpaint(tokens, expected)  # N = 20 is not square


def _chebyshev_ring(h, w, box, r):
    top, left, bh, bw = box
    ring = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            di = max(top - i, 0, i - (top + bh - 1))
            dj = max(left - j, 0, j - (left + bw - 1))
            ring[i, j] = 0 < max(di, dj) <= r
    return ring.flatten()


@pytest.mark.parametrize("dst, harmonize, unknown_cells", [
    ((3, 2, 2, 3), 1, 4 * 5 - 6),
    ((3, 2, 2, 3), 2, 6 * 7 - 6),
    ((0, 5, 2, 3), 1, 3 * 4 - 6),  # clipped at the top-right corner
    ((3, 2, 2, 3), 0, 0),
])
def test_paste_region_keeps_the_paste_and_regenerates_a_ring(dst, harmonize, unknown_cells):
    h = w = 8
    b, c = 2, 2
    target = torch.randint(0, K, (b, h * w, c), generator=gen(25))
    reference = torch.randint(0, K, (b, h * w, c), generator=gen(26))
    src = (1, 0, 2, 3)
    out, known = paste_region(target, reference, src, dst, harmonize=harmonize)
    grid_out, grid_ref = (x.view(b, h, w, c) for x in (out, reference))
    top, left, bh, bw = dst
    assert torch.equal(grid_out[:, top:top + bh, left:left + bw], grid_ref[:, 1:3, 0:3])
    ring = _chebyshev_ring(h, w, dst, harmonize)
    assert int(ring.sum()) == unknown_cells
    assert torch.equal(known, (~ring)[None, :, None].expand(b, h * w, c))
    pasted = box_mask(h, w, dst)
    assert torch.equal(out[:, ~pasted], target[:, ~pasted])
    assert torch.equal(grid_out[:, top:top + bh, left:left + bw].reshape(b, -1, c), out[:, pasted])


def test_paste_region_errors():
    target = torch.zeros(1, 64, 1, dtype=torch.long)
    with pytest.raises(AtelierInputError, match="src_box"):
        paste_region(target, target, (0, 0, 2, 2), (0, 0, 2, 3))
    with pytest.raises(AtelierInputError, match="harmonize"):
        paste_region(target, target, (0, 0, 2, 2), (4, 4, 2, 2), harmonize=-1)
    with pytest.raises(AtelierInputError, match="reference"):
        paste_region(target, torch.zeros(1, 49, 1, dtype=torch.long), (0, 0, 2, 2), (4, 4, 2, 2))


def test_style_mix_takes_b_in_region_and_channels():
    h = w = 6
    b, c = 2, 4
    a = torch.randint(0, K, (b, h * w, c), generator=gen(27))
    bb = torch.randint(0, K, (b, h * w, c), generator=gen(28))
    box = (2, 2, 2, 2)
    inside = box_mask(h, w, box)
    out, known = style_mix(a, bb, box, channels=[1, 3], harmonize=1)
    sel = torch.tensor([False, True, False, True])
    take = inside[:, None] & sel
    assert torch.equal(out, torch.where(take[None], bb, a))
    ring = _chebyshev_ring(h, w, box, 1)
    assert torch.equal(known, ~(ring[:, None] & sel)[None].expand(b, h * w, c))
    # the whole grid, a channel subset: pure channel swap, nothing to re-generate
    out2, known2 = style_mix(a, bb, None, channels=[0])
    assert torch.equal(out2[..., 0], bb[..., 0]) and torch.equal(out2[..., 1:], a[..., 1:])
    assert bool(known2.all())
    with pytest.raises(AtelierInputError, match="channels"):
        style_mix(a, bb, box, channels=[4])


def test_mask_free_edit_resamples_a_small_subset_per_iteration():
    b, n, c, iters = 2, 25, 2, 6
    tokens = torch.randint(0, K, (b, n, c), generator=gen(29))
    target = torch.randint(0, K, (b, n, c), generator=gen(30))
    known = torch.zeros(b, n, c, dtype=torch.bool)
    known[:, :5] = True
    masked_per_call = []
    base = target_fn(target)

    def fn(x):
        masked_per_call.append((x == K).flatten(1).sum(1).tolist())
        assert not bool((x == K)[known].any())
        return base(x)

    per_iter = math.floor(0.08 * 40 + 0.5)  # 40 editable entries per row
    final, frames = mask_free_edit(fn, tokens, iters, mask_id=K, fraction=0.08, top_k=1, known=known,
                                   generator=gen(31))
    assert len(frames) == iters and torch.equal(frames[-1], final)
    assert masked_per_call == [[per_iter, per_iter]] * iters
    prev = tokens
    for f in frames:
        changed = f != prev
        assert int(changed.flatten(1).sum(1).max()) <= per_iter
        assert torch.equal(f[changed], target[changed])  # top-1 of the logits = the target
        assert torch.equal(f[known], tokens[known])
        prev = f
    assert int((final != tokens).sum()) > 0
    with pytest.raises(AtelierInputError, match="fraction"):
        mask_free_edit(fn, tokens, 2, mask_id=K, fraction=0.0)
    with pytest.raises(AtelierInputError, match="tokens"):
        mask_free_edit(fn, torch.full_like(tokens, K), 2, mask_id=K)
