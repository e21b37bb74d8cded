"""reproduce/train_generator_ddp.py: two gloo processes under torchrun train the same weights as
the library's single-process trainer (gradients really are synchronised and the batch really is
split), rank 0 writes a checkpoint that lib.generation.load_generator reads."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lib.io import AtelierInputError
from lib.store import repo_root

torch.set_num_threads(1)

SCRIPT = repo_root() / "reproduce" / "train_generator_ddp.py"
SPEC = importlib.util.spec_from_file_location("train_generator_ddp", SCRIPT)
T = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(T)

TINY = {"dim": 32, "depth": 1, "heads": 2}
STEPS, BATCH = 3, 8


def test_rank_rows_split_the_global_batch():
    parts = [T.rank_rows(10, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), torch.arange(10)) and [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(AtelierInputError, match="batch_size"):
        T.rank_rows(1, 0, 2)


def test_torchrun_two_processes_match_single_process_training(tmp_path):
    import lib.config as lib_params
    import lib.pipelines.generators as generator_pipe
    from lib.generation import load_generator, train_masked

    ckpt = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           "--profile", "smoke", "--name", "muse", "--synthetic", "--steps", str(STEPS), "--batch-size", str(BATCH),
           "--warmup-steps", "1", "--out", str(ckpt), "--quiet",
           *[arg for k, v in TINY.items() for arg in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATELIER_OUT": str(tmp_path / "out")}
    # Started first, then the reference trains in this process while the two ranks run.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    # The reference: lib.generation.train_masked in this process, same data, init and settings.
    try:
        P = lib_params.load("smoke")
        P["generation"].update(TINY)
        G, seed = P["generation"], P["seed"]
        torch.manual_seed(seed)
        spec = T._token_spec(P, "vq")
        model = generator_pipe.build_model(P, "muse", spec)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        data = T.synthetic_data(spec.token_shape, spec.vocab_size, seed=seed)
        history = train_masked(model, data["tokens"], tmp_path / "single.safetensors", steps=STEPS,
                               batch_size=BATCH, lr=G["lr"], seed=seed, caption_ids=data["caption_ids"],
                               text_table=data["table"], mode="muse", cond_drop=G["cond_drop"],
                               label_smoothing=G["label_smoothing"], warmup_steps=1, progress=False)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert f"{STEPS} steps on 2 x cpu" in out

    ddp_model, meta = load_generator(ckpt)
    assert meta["step"] == STEPS and meta["arch"]["objective"] == "muse"
    single, ddp = model.state_dict(), ddp_model.state_dict()
    assert single.keys() == ddp.keys()
    diff = max(float((single[k] - ddp[k]).abs().max()) for k in single)
    moved = max(float((single[k] - init[k]).abs().max()) for k in single)
    assert moved > 1e-3, "training did not change the weights: the comparison would be vacuous"
    assert diff < 1e-5, (diff, moved)
    for a, b in zip(history, meta["history"]):
        assert a["step"] == b["step"]
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["acc"] - b["acc"]) < 1e-6 and a["lr"] == b["lr"]


def test_zero_step_generator_is_refused(tmp_path, capsys):
    # class_mask has 0 steps in the smoke profile: without --steps there is nothing to train
    assert T.main(["--profile", "smoke", "--name", "class_mask", "--synthetic", "--out", str(tmp_path / "c.st"),
                   "--quiet"]) == 2
    assert "0 steps" in capsys.readouterr().err
