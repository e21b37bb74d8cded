"""The DVC stages' drivers: one module per stage kind, run through one entry point,
``python -m lib.stages <stage> --profile P [--name N]`` (``<stage>`` is the stage's name in dvc.yaml).

The dependency rule of ``lib/`` (tests/test_layout.py) puts this package on top: it may import
everything, and nothing imports it. The tables below are plain data, read by the entry point and by
``reproduce/dvc_deps.py`` / ``reproduce/notebook_order.py`` without importing any stage module.
"""

#: stages that run a module of this package: stage -> (module, its command, whether it takes --name)
MODULE_STAGES = {
    "tokenizer": ("lib.stages.tokenizer", "stage", True),
    "tokenizer_finetune": ("lib.stages.tokenizer", "stage", True),
    "text_features": ("lib.stages.generator", "text-features", False),
    "tokens": ("lib.stages.tokens", "build", True),
    "generator": ("lib.stages.generator", "train", True),
    "super_res": ("lib.stages.super_res", "train", False),
    "unifashion_features": ("lib.stages.unifashion", "features", False),
    "unifashion_phase1": ("lib.stages.unifashion", "phase1", False),
    "unifashion_captioner": ("lib.stages.unifashion", "captioner", False),
    "unifashion_generator": ("lib.stages.unifashion", "generator", False),
    "unifashion_phase2": ("lib.stages.unifashion", "phase2", False),
}

#: the notebook each of those stages executes (the tokenizer stages run notebook 02a per name)
MODULE_NOTEBOOKS = {"tokenizer": "notebooks/02a_tokenizer.ipynb", "tokenizer_finetune": "notebooks/02a_tokenizer.ipynb"}

#: stages that execute one notebook headless (papermill, parameter ``profile``) into artifacts/executed/
NOTEBOOK_STAGES = {
    "data": "notebooks/00_data.ipynb",
    "judges": "notebooks/01_judges.ipynb",
    "quantizers": "notebooks/02_quantizers.ipynb",
    "text_to_image": "notebooks/03_text_to_image.ipynb",
    "super_resolution": "notebooks/03c_super_resolution.ipynb",
    "unconditional": "notebooks/04_unconditional.ipynb",
    "editing": "notebooks/05_editing.ipynb",
    "speed": "notebooks/08_speed.ipynb",
    "retrieval": "notebooks/06_retrieval.ipynb",
    "captioning": "notebooks/07_captioning.ipynb",
    "composed_generation": "notebooks/07b_composed_generation.ipynb",
    "claims": "notebooks/09_claims.ipynb",
    "report": "notebooks/99_report.ipynb",
}

#: notebook stages that also render their executed notebook as HTML (no code cells) into this folder
HTML_REPORTS = {"report": "results/report"}


def stage_entries(stage: str) -> list[str]:
    """The files ``python -m lib.stages <stage>`` runs: its module (as a path) and/or its notebook."""
    if stage in NOTEBOOK_STAGES:
        return [NOTEBOOK_STAGES[stage]]
    if stage in MODULE_STAGES:
        module = MODULE_STAGES[stage][0]
        return [module.replace(".", "/") + ".py"] + ([MODULE_NOTEBOOKS[stage]] if stage in MODULE_NOTEBOOKS else [])
    raise KeyError(stage)
