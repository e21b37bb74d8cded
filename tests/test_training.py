"""The resumable training loop: exact resume, atomic checkpoints, refusal of foreign checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.io import AtelierInputError
from lib.training import ResumableTrainer, batch_indices


class _Crash(RuntimeError):
    pass


def _run(ckpt, total=20, crash_at=None, arch=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)

    def step_fn(step):
        if crash_at is not None and step == crash_at:
            raise _Crash("killed")
        idx = batch_indices(64, 16, step, seed=3)
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    trainer = ResumableTrainer(model, opt, ckpt, arch or {"name": "toy"}, seed=5, total_steps=total, ckpt_every=5,
                               desc="toy")
    history = trainer.run(step_fn, progress=False)
    return model, history


def test_resume_after_crash_gives_identical_weights(tmp_path):
    straight, hist_a = _run(tmp_path / "a.safetensors")
    with pytest.raises(_Crash):
        _run(tmp_path / "b.safetensors", crash_at=12)
    resumed, hist_b = _run(tmp_path / "b.safetensors")
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    assert hist_a[-1]["loss"] < hist_a[0]["loss"]


def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    _run(tmp_path / "c.safetensors", total=5)
    with pytest.raises(AtelierInputError, match=r"c\.safetensors: checkpoint is for architecture"):
        _run(tmp_path / "c.safetensors", total=10, arch={"name": "other"})


def test_checkpoint_of_a_run_with_another_length_is_refused(tmp_path):
    _run(tmp_path / "d.safetensors", total=5)
    with pytest.raises(AtelierInputError, match=r"d\.safetensors: checkpoint of a 5-step run, this run has 10 steps"):
        _run(tmp_path / "d.safetensors", total=10)


def test_batch_indices_cover_each_epoch_once():
    seen = np.concatenate([batch_indices(100, 10, s, seed=0) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not np.array_equal(batch_indices(100, 10, 0, 0), batch_indices(100, 10, 10, 0))  # new epoch, new order


def test_one_lr_schedule_warms_up_then_decays_to_zero():
    """Issue 16: the single warm-up + cosine schedule every trainer uses (generation, Q-Former phases)."""
    from lib.training import lr_factor

    steps, warm = 100, 10
    f = [lr_factor(s, steps, warm) for s in range(steps)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warm - 1], f[1:warm]))          # rising during warm-up
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))          # never rising after it
    assert f[-1] < 0.01 and lr_factor(steps, steps, warm) == pytest.approx(0.0)
    assert lr_factor(50, steps, warm, "constant") == 1.0
