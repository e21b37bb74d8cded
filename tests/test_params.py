"""params.yaml profiles and validation."""

from __future__ import annotations

import shutil

import pytest
import yaml

import lib.config as params
from lib.io import AtelierInputError
from lib.store import repo_root


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    return path


def test_every_profile_loads_and_validates():
    for profile in params.PROFILES:
        p = params.load(profile)
        assert p["profile"] == profile and "data" in p


def test_profiles_override_shared_sections():
    smoke, default = params.load("smoke"), params.load("default")
    assert smoke["data"]["captions_per_image"] == default["data"]["captions_per_image"]
    assert smoke["data"]["max_train"] is not None and default["data"]["max_train"] is None


def test_unknown_profile_is_named(params_file):
    with pytest.raises(AtelierInputError, match=r"unknown profile 'fastest'.*smoke"):
        params.load("fastest", params_file)


@pytest.mark.parametrize("key, value, message", [
    ("captions_per_image", "three", r"data\.captions_per_image: must be an integer, got str"),
    ("heldout_test_fraction", 1.5, r"data\.heldout_test_fraction: must be in \[0\.0, 1\.0\], got 1\.5"),
    ("val_size", True, r"data\.val_size: must be an integer"),
    ("colour_count", 3, r"data\.colour_count: unknown parameter"),
])
def test_bad_values_are_named(params_file, key, value, message):
    raw = yaml.safe_load(params_file.read_text())
    raw["data"][key] = value
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(AtelierInputError, match=message):
        params.load("smoke", params_file)


def test_set_profile_keeps_comments_and_refuses_unknown(params_file):
    params.set_profile("smoke", params_file)
    text = params_file.read_text()
    assert "profile: smoke" in text and "# Configuration is data" in text
    with pytest.raises(AtelierInputError, match="unknown profile"):
        params.set_profile("nope", params_file)
    assert "profile: smoke" in params_file.read_text()  # nothing written on error


def test_malformed_yaml_names_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: [unclosed\n")
    with pytest.raises(AtelierInputError, match=r"params\.yaml: not valid YAML"):
        params.load("smoke", bad)


def _with_m6_entry(params_file, **changes):
    raw = yaml.safe_load(params_file.read_text())
    entry = raw["generation"]["models"]["m6"]
    for k, v in changes.items():
        if v is None:
            entry.pop(k, None)
        else:
            entry[k] = v
    params_file.write_text(yaml.safe_dump(raw))


def test_m6_condition_mixture_comes_from_params_and_reaches_the_trainer_probs(params_file):
    from lib.generation import COMBINATION_PROBS_PRINTED, COMBINATION_PROBS_PROSE
    from lib.generation.masking import COMBINATION_READINGS
    from lib.stages.generator import condition_mixture
    assert tuple(COMBINATION_READINGS) == params.CONDITION_MIXTURES  # the torch-free list names the same readings
    entry = params.load("default")["generation"]["models"]["m6"]
    assert entry["condition_mixture"] == "prose"
    assert condition_mixture(entry) == COMBINATION_PROBS_PROSE == (0.20, 0.20, 0.55, 0.05)
    _with_m6_entry(params_file, condition_mixture="printed")
    printed = params.load("default", params_file)["generation"]["models"]["m6"]
    assert condition_mixture(printed) == COMBINATION_PROBS_PRINTED == (0.20, 0.55, 0.20, 0.05)
    _with_m6_entry(params_file, condition_mixture="typed")
    with pytest.raises(AtelierInputError, match=r"models\.m6\.condition_mixture: must be one of prose, printed"):
        params.load("default", params_file)
    _with_m6_entry(params_file, condition_mixture=None)
    with pytest.raises(AtelierInputError, match=r"models\.m6\.condition_mixture: missing"):
        params.load("default", params_file)


def _edit_models(params_file, fn):
    raw = yaml.safe_load(params_file.read_text())
    fn(raw)
    params_file.write_text(yaml.safe_dump(raw))


def test_seed_replicas_repeat_their_entry_but_for_the_seed_and_train_as_long(params_file):
    import lib.config.generation as generation_cfg

    P = params.load("default")
    assert generation_cfg.seed_runs(P, "m6_pq") == {0: "m6_pq", 1: "m6_pq_seed1", 2: "m6_pq_seed2"}
    assert generation_cfg.seed_of(P, "m6_pq") == P["seed"] == 0 and generation_cfg.seed_of(P, "m6_pq_seed2") == 2
    assert generation_cfg.seed_runs(P, "muse") == {0: "muse"}  # no replicas: the one run
    # a replica that differs in anything but its seed is refused, naming the key
    _edit_models(params_file, lambda r: r["generation"]["models"]["m6_pq_seed1"].update(tokenizer="rq"))
    with pytest.raises(AtelierInputError, match=r"m6_pq_seed1: a seed replica of 'm6_pq' must equal it except in seed; "
                                                r"differs in tokenizer"):
        params.load("default", params_file)
    shutil.copy(repo_root() / "params.yaml", params_file)
    _edit_models(params_file, lambda r: r["profiles"]["default"]["generation"]["steps"].update(m6_pq_seed1=100))
    with pytest.raises(AtelierInputError, match=r"steps.m6_pq_seed1: 100 steps, but the entry it replicates \(m6_pq\) has 300"):
        params.load("default", params_file)
    shutil.copy(repo_root() / "params.yaml", params_file)
    _edit_models(params_file, lambda r: r["generation"]["models"]["m6_pq_seed2"].update(seed=1))
    with pytest.raises(AtelierInputError, match=r"m6_pq_seed2.seed: 1 is already used by another run of 'm6_pq'"):
        params.load("default", params_file)
    shutil.copy(repo_root() / "params.yaml", params_file)
    _edit_models(params_file, lambda r: r["generation"]["models"]["m6_pq_seed2"].pop("seed"))
    with pytest.raises(AtelierInputError, match=r"m6_pq_seed2: a seed replica needs both replicates"):
        params.load("default", params_file)


def test_params_yaml_is_in_the_layout_dvc_writes_back(tmp_path):
    """Issue 20: `dvc exp run -S` re-serialised params.yaml (+107/-67 lines) because its layout was
    not DVC's. DVC's own round trip must leave the file byte-identical, and setting one value
    through it must change exactly one line."""
    serialize = pytest.importorskip("dvc.utils.serialize")
    original = (repo_root() / "params.yaml").read_text()
    copy = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", copy)
    with serialize.modify_yaml(copy):
        pass
    assert copy.read_text() == original
    with serialize.modify_yaml(copy) as doc:
        doc["seed"] = 7
    changed = [(a, b) for a, b in zip(original.splitlines(), copy.read_text().splitlines()) if a != b]
    assert len(original.splitlines()) == len(copy.read_text().splitlines()) and changed == [("seed: 0", "seed: 7")]


def test_checking_params_yaml_imports_no_torch():
    """Issue 16: ``lib.config.load`` used to import torch through lib.stages.unifashion / lib.stages.super_res to
    check their sections; their schemas now live in lib.config."""
    import subprocess
    import sys

    code = ("import sys, lib.config as p\n"
            "for prof in p.PROFILES: p.load(prof)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in ('lib.stages.unifashion', 'lib.stages.super_res')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root())
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_instruction_names_match_the_caption_decoders_prompts():
    from lib.retrieval.caption_decoder import INSTRUCTIONS

    assert params.INSTRUCTION_NAMES == tuple(INSTRUCTIONS)
