"""Named image tokenizers: configurations from ``params.yaml``, evaluation, and the DVC stage driver.

``params.yaml`` describes every tokenizer as data (validated by :mod:`lib.config`):

- ``tokenizers.<key>``: settings every tokenizer shares -- architecture (``image_size``, ``ch``,
  ``ch_mult``, ``num_res_blocks``, ``z_dim``), codebook options, training (``batch_size``, ``lr``,
  ``perceptual_weight``, ``gan_weight``, ``gan_start`` as a fraction of the steps, ``disc_ndf``) and
  the reconstruction grid size;
- ``tokenizers.configs``: name -> ``{quantizer, quantizer_kwargs, decoder, decoder_kwargs}``, each
  trained from scratch (:func:`lib.models.tokenizer.train_tokenizer`);
- ``tokenizers.finetunes``: name -> ``{base, width_mult, depth_mult}``, Muse Sec. 2.5 decoder
  fine-tunes of a trained config (:func:`lib.models.tokenizer.finetune_decoder`);
- ``profiles.<p>.tokenizers``: ``steps`` (name -> training steps; **0 = not run in this profile**),
  ``rfid_n`` and ``eval_n`` (test images for rFID and for PSNR/SSIM/codebook usage).

The DVC stages ``tokenizer`` / ``tokenizer_finetune`` run one name each through :func:`run_stage`
(``python -m lib.stages.tokenizer stage ...``): a name the profile trains is executed with papermill
(``notebooks/02a_tokenizer.ipynb``); a name it does not train gets the same output paths with a
``skipped`` marker in about a second, so one ``foreach`` over all names serves every profile.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import lib.config as lib_params
from lib.config.tokenizers import all_names, is_active
from lib.io import AtelierInputError, atomic_path, atomic_write_json
from lib.provenance import git_revision, write_metrics
from lib.store import out_root
from lib.store.tokenizers import SKIPPED_MARKER, STAGE, checkpoint_path, loss_path, metrics_path


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------
# Paths only (nothing is created: readers must not leave empty folders in other stages' outputs;
# every writer here creates the parents atomically).
# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The DVC stage driver
# ---------------------------------------------------------------------------------------------
def executed_notebook_path(name: str) -> Path:
    return out_root() / "artifacts" / "executed" / "02a_tokenizer" / f"{name}.ipynb"


def figure_path(name: str) -> Path:
    """Where ``save_figure(fig, STAGE, name)`` writes."""
    return out_root() / "artifacts" / "figures" / STAGE / f"{name}.png"


def write_skipped(profile: str, name: str, seed: int = 0) -> list[Path]:
    """Write every output path of ``name``'s stage, marked ``skipped`` (the profile has 0 steps for it).

    Kept light (no torch, no matplotlib: about a second) because a small profile skips most names.
    """

    reason = f"not trained in profile {profile!r} (profiles.{profile}.tokenizers.steps.{name} = 0)"
    written = [atomic_write_json(checkpoint_path(name).parent / SKIPPED_MARKER,
                                 {"config": name, "profile": profile, "skipped": True, "reason": reason})]
    prov = {"profile": profile, "seed": seed, "config": name, "git_revision": git_revision(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "computed": "nothing: skipped by lib.stages.tokenizer.write_skipped"}
    written.append(write_metrics(metrics_path(name), {"skipped": True, "reason": reason}, prov))
    written.append(atomic_write_json(loss_path(name), []))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    text = f"{name}: {reason}"
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 16, bottom - top + 16), "white")
    ImageDraw.Draw(image).text((8 - left, 8 - top), text, fill="black", font=font)
    target = figure_path(name)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
    written.append(target)
    # A one-cell nbformat-4 notebook written as JSON (importing nbformat alone costs seconds).
    text = (f"# 02a · tokenizer `{name}`: skipped\n\n{reason}. Nothing was trained or evaluated; "
            "`notebooks/02a_tokenizer.ipynb` runs for the names this profile trains.")
    nb = {"cells": [{"cell_type": "markdown", "id": "skipped", "metadata": {}, "source": text}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    target = executed_notebook_path(name)
    atomic_write_json(target, nb)
    written.append(target)
    return written


def run_stage(notebook: str, profile: str, name: str) -> int:
    """One ``tokenizer@<name>`` stage: papermill ``notebook`` if the profile trains ``name``, else
    :func:`write_skipped`. Returns the exit status."""
    params = lib_params.load(profile)
    section = params["tokenizers"]
    if not is_active(section, name):
        return run_skipped(profile, [name])
    target = executed_notebook_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", "--log-output", notebook, str(target),
           "-p", "profile", profile, "-p", "config", name]
    print("+ papermill", " ".join(cmd[3:]), flush=True)
    return subprocess.call(cmd)


def run_skipped(profile: str, names: list[str]) -> int:
    """:func:`write_skipped` for several names at once; a name the profile trains is an error."""
    params = lib_params.load(profile)
    trained = [n for n in names if is_active(params["tokenizers"], n)]
    if trained:
        raise AtelierInputError(f"tokenizers {trained} are trained in profile {profile!r}: run "
                                "`python -m lib.stages.tokenizer stage` for them, not `skip`")
    for name in names:
        for path in write_skipped(profile, name, params["seed"]):
            print(f"[tokenizer {name}] skipped in profile {profile}: wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.stages.tokenizer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one tokenizer stage (papermill, or skipped outputs)")
    stage.add_argument("notebook")
    stage.add_argument("--profile", required=True)
    stage.add_argument("--config", required=True)
    skip = sub.add_parser("skip", help="write the 'skipped' outputs of several names the profile does not train, "
                                       "in one process (what `stage` does for each; used by reproduce/test)")
    skip.add_argument("--profile", required=True)
    skip.add_argument("--config", required=True, nargs="+")
    sub.add_parser("list", help="print every tokenizer name with its steps in each profile")
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            return run_stage(args.notebook, args.profile, args.config)
        if args.command == "skip":
            return run_skipped(args.profile, args.config)
        loaded = {p: lib_params.load(p)["tokenizers"] for p in lib_params.PROFILES}
        names = all_names(next(iter(loaded.values())))
        print("name".ljust(24) + "".join(p.rjust(10) for p in loaded))
        for n in names:
            print(n.ljust(24) + "".join(str(loaded[p]["steps"].get(n, "-")).rjust(10) for p in loaded))
        return 0
    except AtelierInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
