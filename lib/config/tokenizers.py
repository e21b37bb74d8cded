"""Accessors of the ``tokenizers`` section of a loaded profile (plain dicts in, plain values out)."""

from __future__ import annotations

from typing import Any, Mapping

from lib.io import AtelierInputError


def all_names(section: Mapping[str, Any]) -> list[str]:
    """Every tokenizer name: trained-from-scratch configs first, then fine-tunes (params order)."""
    return [*section["configs"], *section["finetunes"]]


def require_known(section: Mapping[str, Any], name: str) -> None:
    if name not in section["configs"] and name not in section["finetunes"]:
        raise AtelierInputError(
            f"params.yaml: no tokenizer named {name!r} in tokenizers.configs or tokenizers.finetunes "
            f"(known: {', '.join(all_names(section))})"
        )


def is_finetune(section: Mapping[str, Any], name: str) -> bool:
    require_known(section, name)
    return name in section["finetunes"]


def steps_of(section: Mapping[str, Any], name: str) -> int:
    """Training steps of ``name`` in the loaded profile (0: the profile does not run it)."""
    require_known(section, name)
    return int(section["steps"][name])


def is_active(section: Mapping[str, Any], name: str) -> bool:
    return steps_of(section, name) > 0


def gan_start_step(section: Mapping[str, Any], steps: int) -> int:
    """First step with the discriminator on: ``gan_start`` is a fraction of the run's steps."""
    return int(round(float(section["gan_start"]) * steps))


def base_of(section: Mapping[str, Any], name: str) -> str | None:
    """The base config a fine-tune starts from (``None`` for a config trained from scratch)."""
    return section["finetunes"][name]["base"] if is_finetune(section, name) else None
