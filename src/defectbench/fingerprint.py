"""Code fingerprints: a hash of the library source files a job imports (instead of a version number).

A rule's script imports a few ``defectbench`` modules; those import others. :func:`code_fingerprint`
follows every ``import``/``from ... import`` statement (function-level ones too: lazy imports
count) within the package by parsing the sources with :mod:`ast`, never executing them, and
hashes the files reached (with each package's ``__init__.py``, which Python runs first). Each job
carries the fingerprint in its params, so Snakemake's params trigger reruns exactly the jobs whose
code changed. Parsing the ~50 library files takes a few milliseconds and is cached per process.

>>> files = module_closure(["defectbench.ssl.losses"])
>>> sorted(p.name for p in files)
['__init__.py', '__init__.py', 'losses.py']
>>> len(code_fingerprint(["defectbench.ssl.losses"]))
12
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Iterable

PACKAGE = "defectbench"
PACKAGE_ROOT = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of a ``defectbench`` module (``pkg/__init__.py`` for a package), else None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _direct_imports(path: Path) -> tuple[str, ...]:
    """Modules imported anywhere in ``path`` (absolute names; candidates, not all modules)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            # `from pkg import name`: name may be a submodule
            found += [f"{module}.{alias.name}" for alias in node.names]
    return tuple(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(modules: Iterable[str]) -> set[Path]:
    """Source files of ``modules`` and of everything they import within the package."""
    seen: set[Path] = set()
    todo = [m for module in modules for m in _with_parents(module)]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [m for imported in _direct_imports(path) for m in _with_parents(imported)]
    return seen


# The frame every job script runs in (its log and, with a tracking server, its live MLflow runs):
# it writes none of the job's outputs, so a script importing only it from that module does not
# take the MLflow/tables code into its fingerprint (an edit there reruns the track rule only).
JOB_FRAME = ("defectbench.tracking", frozenset({"tracked_job"}))


def script_imports(script: str | Path) -> tuple[str, ...]:
    """The ``defectbench`` modules a workflow script imports (not the job frame, :data:`JOB_FRAME`)."""
    return _script_imports(Path(script).resolve())


@functools.lru_cache(maxsize=None)
def _script_imports(script: Path) -> tuple[str, ...]:
    tree = ast.parse(script.read_text(), filename=str(script))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if (node.module, {a.name for a in node.names}) == (JOB_FRAME[0], JOB_FRAME[1]):
                continue
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return tuple(m for m in found if m.startswith(PACKAGE + "."))


@functools.lru_cache(maxsize=None)
def _fingerprint(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in sorted(module_closure(modules)):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_fingerprint(modules: Iterable[str]) -> str:
    """12-hex hash of the sources reached from ``modules`` (order and duplicates do not matter)."""
    return _fingerprint(tuple(sorted(set(modules))))
