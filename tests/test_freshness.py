"""reproduce/freshness.py: the README says which committed results are stale, and says it truly."""

from __future__ import annotations

import importlib.util

import pytest

from lib.store import repo_root

SPEC = importlib.util.spec_from_file_location("freshness", repo_root() / "reproduce" / "freshness.py")
FR = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(FR)

STATUS = {
    "data.dvc": [{"changed outs": {"data": "not in cache"}}],
    "judges": [{"changed outs": {"artifacts/judges": "not in cache"}}],           # outputs absent: fresh
    "tokenizer@vq": [{"changed deps": {"artifacts/data/captions": "deleted"}},   # upstream absent: fresh
                     {"changed outs": {"artifacts/tokenizers/vq": "deleted"}}],
    "generator@muse": [{"changed deps": {"lib/generation": "modified", "artifacts/text": "deleted",
                                         "params.yaml": {"generation.lr": "modified", "seed": "deleted"}}}],
    "report": ["changed command"],
}


def test_only_changed_inputs_make_a_stage_stale():
    assert FR.stale(STATUS) == {"generator@muse": ["lib/generation", "params.yaml (generation.lr)"],
                                "report": ["its command"]}


def test_an_output_re_made_upstream_makes_its_consumers_stale_from_the_lock_alone():
    lock = {"generator@muse": {"outs": [{"path": "artifacts/generators/muse", "md5": "new.dir"}]},
            "text_to_image": {"deps": [{"path": "artifacts/generators/muse", "md5": "old.dir"},
                                       {"path": "lib/evaluation/judge_panel.py", "md5": "x"}]},
            "speed": {"deps": [{"path": "artifacts/generators/muse", "md5": "new.dir"}]}}
    status = {"text_to_image": [{"changed deps": {"artifacts/generators/muse": "modified"}}]}  # a local rebuild
    assert FR.stale(status, lock) == {"text_to_image": ["artifacts/generators/muse (re-made by generator@muse)"]}


def test_block_lists_stale_stages_or_says_all_are_fresh():
    block = FR.render(FR.stale(STATUS), 5)
    assert "**2 of 5 stages are stale**" in block
    assert "| `generator@muse` | `lib/generation`, `params.yaml (generation.lr)` |" in block
    assert "all 5 stages' committed results come from the committed code" in FR.render({}, 5)
    many = FR.render({"s": [f"lib/m{i}.py" for i in range(9)]}, 1)
    assert "and 3 more" in many


def test_readme_block_matches_dvc_status_of_this_checkout():
    """The README's freshness block is what `dvc status` says now: a change to a stage's code or
    params without re-running it (or a re-run without refreshing the README) fails here."""
    pytest.importorskip("dvc")
    readme = (repo_root() / "README.md").read_text()
    block = FR.current_block(readme)
    want = FR.render(FR.stale(FR.dvc_status(repo_root()), FR.lock_stages(repo_root())), FR.stage_count(repo_root()))
    assert block == want, "README.md freshness block is out of date: run reproduce/freshness.py"
