"""The ``cfg`` a rule's job receives, built by the real params layer (for calling a stage directly)."""

from __future__ import annotations

from typing import Any

from defectbench import params
from defectbench.config import validate_config

DATASET = {"source": {"kind": "directory", "path": "unused"}, "layout": "imagefolder"}


def job_cfg(rule: str, sections: dict[str, Any] | None = None, **wildcards: Any) -> dict[str, Any]:
    """``params.cfg`` of one job of ``rule`` for a config made of ``sections`` over the schema's
    defaults (device cpu), without the code fingerprint."""
    cfg = validate_config({"datasets": {"d": dict(DATASET)}, "device": "cpu", **(sections or {})})
    return params.STAGES[rule](cfg, {"dataset": "d", **{k: str(v) for k, v in wildcards.items()}})
