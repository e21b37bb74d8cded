"""Accessors of the ``super_res`` section of a loaded profile."""

from __future__ import annotations

from typing import Any, Mapping


def other_form(S: Mapping[str, Any]) -> str:
    """The ``low_res_mode`` that ``super_res.compare_forms`` trains beside the configured one."""
    return "joint" if S["low_res_mode"] == "cross_attention" else "cross_attention"
