"""Run the real workflow in a temporary working copy (shared by the workflow tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "report", "envs")


def working_copy(tmp: Path) -> Path:
    """Copy the workflow files (not results) into tmp; return the new project root."""
    dest = tmp / "project"
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def write_config(project: Path, cfg: dict, name: str = "test.yaml") -> Path:
    path = project / "config" / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(project: Path, *args: str, timeout: int = 900, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`snakemake` of the venv in `project`, with the venv on PATH (jobs inherit it) and `env` set."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    cmd = ["timeout", "-k", "30", str(timeout), str(VENV_BIN / "snakemake"), *args]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return proc
