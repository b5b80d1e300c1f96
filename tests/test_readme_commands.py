"""Every documented command runs: the shell blocks of README.md and the usage lines at the top of
config/*.yaml, so the documentation cannot rot (Snakemake 9 dropped ``-r``; a target written after
``--configfile`` is read as a config file).

The commands of one block run in order (a later one may use what an earlier one wrote), in a
temporary working copy with what the README assumes to exist: ``my.yaml`` = the demo config,
``path/to/my-parts`` = a folder of real images (the NEU sample, one folder per class), the reference
tables as ``results/tables`` and ``.venv`` = the venv running the tests. Each runs as written,
except where the real thing is a long run or a server:

* ``make <target>`` runs as ``make -n <target>`` (the two commands are what a fresh clone runs);
* a ``snakemake`` run becomes its dry run (``-n``, core counts dropped): the DAG, config
  validation and targets are checked, no job runs;
* commands in ``HELP_ONLY`` are checked against their ``--help``: the program and subcommand exist
  and accept every option the README uses.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SAMPLE
from workflow_helpers import ROOT, VENV_BIN, working_copy

pytestmark = pytest.mark.slow

#: command prefix -> why it is only checked against its --help
HELP_ONLY = {
    "mlflow ui": "a web server that runs until stopped",
    "defectbench compare --source mlflow": "reads the MLflow store of a finished run",
}
SHELL_FENCES = ("bash", "sh", "shell", "console")
CONFIG_USAGE = re.compile(r"^#\s+((?:snakemake|defectbench)\s[^(]*?)\s*(?:\(.*)?$")


@dataclass(frozen=True)
class Documented:
    where: str      # file:line
    command: str    # the command as documented (no comment)
    comment: str    # its trailing comment, if any


def readme_blocks(readme: Path = ROOT / "README.md") -> list[list[Documented]]:
    """The command lines of each shell code block of the README (``\\`` continuations joined)."""
    blocks, fence, pending, start = [], None, "", 0
    for n, line in enumerate(readme.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            if fence in SHELL_FENCES:
                blocks.append([])
            continue
        if fence not in SHELL_FENCES or not line.strip():
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        command, _, comment = text.partition(" #")
        blocks[-1].append(Documented(f"README.md:{start}", command.strip(), comment.strip()))
    return [b for b in blocks if b]


def config_commands() -> list[Documented]:
    """The usage lines (``#   snakemake ...``) at the top of every config file."""
    out = []
    for path in sorted((ROOT / "config").rglob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.startswith("#"):
                break
            if m := CONFIG_USAGE.match(line):
                out.append(Documented(f"{path.relative_to(ROOT)}:{n}", m.group(1), ""))
    return out


def as_run_here(command: str) -> tuple[str, str | None]:
    """(shell command to run, HELP_ONLY reason or None) for one documented command."""
    for prefix, reason in HELP_ONLY.items():
        if command.startswith(prefix):
            return command, reason
    parts = []
    for part in command.split(" && "):
        words = shlex.split(part)
        if words[0] == "make":
            part = shlex.join(["make", "-n", *words[1:]])
        elif words[0] == "snakemake":
            part = shlex.join(["snakemake", "-n", *_without_dry_run_noise(words[1:])])
        parts.append(part)
    return " && ".join(parts), None


def _without_dry_run_noise(args: list[str]) -> list[str]:
    """Snakemake arguments minus the dry-run flag and the core/thread counts (no job runs)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--cores", "-c", "--max-threads"):
            skip = True
        elif arg not in ("-n", "--dry-run", "--dryrun"):
            out.append(arg)
    return out


def documented_blocks() -> list[list[Documented]]:
    """README blocks, then each config usage line the README does not already run (as run here)."""
    blocks = readme_blocks()
    in_readme = {as_run_here(d.command) for block in blocks for d in block}
    return blocks + [[d] for d in config_commands() if as_run_here(d.command) not in in_readme]


BLOCKS = documented_blocks()


def test_documented_commands_are_found():
    """The extraction itself: both blocks of the README and the broken shared-data line are seen."""
    commands = [d.command for block in BLOCKS for d in block]
    assert ["make demo", "make test"] == [d.command for d in BLOCKS[0]]
    assert "snakemake -n --configfile my.yaml" in commands
    assert any(d.where.startswith("config/shared-data.yaml") for block in BLOCKS for d in block)
    assert all(d.command and "#" not in d.command for block in BLOCKS for d in block)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = working_copy(tmp_path_factory.mktemp("readme"))
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copy2(ROOT / "config" / "config.yaml", project / "my.yaml")
    shutil.copytree(SAMPLE / "neu-steel", project / "path" / "to" / "my-parts")
    shutil.copytree(ROOT / "results" / "reference" / "tables", project / "results" / "tables")
    (project / ".venv").symlink_to(VENV_BIN.parent)
    return project


def _run(project: Path, command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def _check_help(project: Path, doc: Documented, command: str, reason: str) -> None:
    words = shlex.split(command)
    program = [w for w in words[:2] if not w.startswith("-")]
    proc = _run(project, shlex.join([*program, "--help"]))
    assert proc.returncode == 0, f"{doc.where}: `{shlex.join(program)} --help` failed: {proc.stderr[-2000:]}"
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in proc.stdout, f"{doc.where}: {shlex.join(program)} has no option {option} ({reason})"


@pytest.mark.parametrize("block", [pytest.param(b, id=f"{b[0].where} {b[0].command}") for b in BLOCKS])
def test_documented_block_runs(project, block):
    for doc in block:
        command, help_reason = as_run_here(doc.command)
        if help_reason:
            _check_help(project, doc, command, help_reason)
            continue
        proc = _run(project, command)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{doc.where}: `{command}` failed ({proc.returncode}):\n{out[-3000:]}"
        if "why" in doc.comment:  # "what would run, and why": every planned job says its reason
            assert out.count("reason:") >= out.count("\nrule ") > 0, f"{doc.where}: `{command}` printed no reasons"
