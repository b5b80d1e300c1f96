"""Shared job plumbing: device choice, seeding, atomic writes, metrics.json, job logging.

Every pipeline stage runs inside :func:`stage_job` (threads, device, amp, seed, timing, log lines,
metrics.json) and writes its results through these helpers, so that

* a killed job never leaves a file that looks finished (``atomic_path``),
* every job records the same provenance (``write_metrics``: config slice, config hash,
  library/torch versions, device, seed, wall time), and
* tables can be rebuilt from ``results/`` alone.

>>> from defectbench.runtime import config_hash
>>> config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import random
import secrets
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger("defectbench")


class DefectbenchError(Exception):
    """A user-facing error: one line naming the file or config key and what to do."""


# ----------------------------------------------------------------------------- device / seeds
def pick_device(preference: str = "auto") -> "torch.device":  # noqa: F821
    """CUDA when present (or when asked), else CPU. ``preference``: auto | cpu | cuda."""
    import torch

    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise DefectbenchError("device: 'cuda' was requested but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_deterministic(enabled: bool) -> None:
    """``torch.use_deterministic_algorithms(enabled)`` for the ``deterministic`` config key.

    One small hook for every torch stage's set-up: call it once at the start of a job, before its
    first CUDA GEMM (cuBLAS reads its workspace setting then). On CUDA it selects deterministic
    kernels (and fails loudly on an op that has none) and turns cuDNN's autotuner off. On CPU see
    benchmarks/results/determinism.md for what it does and does not fix.
    """
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # The call imports torch._inductor and with it torch._dynamo and sympy: 1.4 s of every job's
    # start-up (benchmarks/results/startup.md). Off is torch's default, so only a change calls it.
    if enabled or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled)


def autocast_context(device: "torch.device", amp: str | bool | None):  # noqa: F821
    """Mixed precision as configured: ``none``/False, ``bf16`` or ``fp16`` (fp16 only on CUDA).

    On CPU only bf16 autocast exists; fp16 on CPU falls back to bf16 (recorded by the caller via
    :func:`effective_amp`).
    """
    import torch

    mode = effective_amp(device, amp)
    if mode == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def effective_amp(device: "torch.device", amp: str | bool | None) -> str:  # noqa: F821
    """The precision that will really be used: none | bf16 | fp16."""
    if amp in (None, False, "none", "fp32", "no"):
        return "none"
    if amp is True:
        amp = "bf16"
    if amp not in ("bf16", "fp16"):
        raise DefectbenchError(f"amp: unknown value {amp!r}; use none, bf16 or fp16")
    if device.type != "cuda" and amp == "fp16":
        amp = "bf16"
    if device.type == "cpu":
        _warn_if_bf16_emulated()
    return amp


@functools.lru_cache(maxsize=1)
def _warn_if_bf16_emulated() -> None:
    """Say once per process when bf16 autocast on this CPU is emulated, hence slower than fp32.

    Without AVX512-BF16/AMX (oneDNN's bf16 support) every bf16 op is converted in software: on an
    AVX2 EPYC a ResNet-18 training step measured 7x slower than in fp32.
    """
    import torch

    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probe gone in some torch build: assume native
        native = True
    if not native:
        log.warning("amp bf16 on a CPU without native bf16 (%s): emulated, expect it several times "
                    "slower than fp32; set amp: none for CPU runs on this machine",
                    torch.backends.cpu.get_cpu_capability())


# ----------------------------------------------------------------------------- atomic writes
# Temporary names are created with os.open(..., 0o666) / os.mkdir(..., 0o777) rather than
# tempfile.mkstemp/mkdtemp (0600/0700): the kernel then applies the caller's umask (and any default
# ACL), so a finished output is as readable by a team as a file any other tool would write. Some
# libraries write privately all the same (safetensors' save_file, under the UNet's save_pretrained, writes
# 0600), so before the rename everything written gets the bits the umask allowed on creation.
def new_temp_file(parent: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create an empty, uniquely named file in ``parent`` with the mode the umask gives."""
    return _create_unique(Path(parent), prefix, suffix, lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))


def new_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """Create an empty, uniquely named directory in ``parent`` with the mode the umask gives."""
    return _create_unique(Path(parent), prefix, "", lambda p: os.mkdir(p, 0o777))


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free temporary name starting with {prefix!r} after 100 tries")


def _grant_allowed_bits(root: Path, allowed: int) -> None:
    """Add the permission bits ``allowed`` (0777 & ~umask) to ``root`` and everything under it
    (files: the read/write bits only), never removing a bit."""
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = mode | (allowed if path.is_dir() else allowed & 0o666)
        if wanted != mode:
            os.chmod(path, wanted)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "x.txt").read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = new_temp_file(path.parent, f".{path.name}.", suffix or path.suffix or ".tmp")
    allowed = stat.S_IMODE(tmp_path.stat().st_mode)
    try:
        yield tmp_path
        _grant_allowed_bits(tmp_path, allowed)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(path.parent, f".{path.name}.")
    allowed = stat.S_IMODE(tmp.stat().st_mode)
    try:
        yield tmp
        _grant_allowed_bits(tmp, allowed)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, df: "pandas.DataFrame") -> None:  # noqa: F821
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, atomically. Only tensors/plain containers: loadable with weights_only=True."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers (never unpickles code)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: file not found") from None
    except Exception as exc:  # corrupt or non-weights file
        raise DefectbenchError(f"{path}: not a readable weights file ({type(exc).__name__}); delete it and rerun") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- provenance
def config_hash(cfg: Any) -> str:
    """Stable 12-hex hash of a JSON-able config slice (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def versions() -> dict[str, str]:
    """Versions of the library and the packages that decide numbers."""
    from importlib import metadata

    from defectbench import __version__

    out = {"defectbench": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_metrics(
    path: str | os.PathLike,
    *,
    stage: str,
    metrics: dict[str, Any],
    config: dict[str, Any],
    keys: dict[str, Any],
    device: str,
    wall_time_s: float,
    protocol: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a job's ``metrics.json``: the one record the tables are built from.

    ``keys`` identify the job in its table (dataset, method, backbone, seed, ...); ``config`` is
    exactly the config slice the rule received; ``metrics`` are flat name -> number.
    """
    record = {
        "stage": stage,
        **keys,
        "protocol": protocol or config.get("protocol", "clean"),
        "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
        "config": config,
        "config_hash": config_hash(config),
        "versions": versions(),
        "device": device,
        "wall_time_s": float(wall_time_s),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        record["extra"] = extra
    write_json(path, record)
    return record


# ----------------------------------------------------------------------------- logging
@contextlib.contextmanager
def job_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send the library's log (and warnings) to the job's log file and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield log
    except DefectbenchError as exc:
        log.error("%s", exc)
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


class Timer:
    """``with Timer() as t: ...; t.seconds`` (the one timing idiom; ``t.elapsed()`` while running)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = self.elapsed()

    def elapsed(self) -> float:
        """Seconds since the block was entered."""
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------- stage jobs
class StageJob:
    """What :func:`stage_job` sets up for one pipeline job: its device, effective amp, seed and
    clock, and the job's identity (stage, config slice, keys) that its metrics.json records.

    Attributes: ``stage``, ``cfg`` (the rule's config slice), ``keys`` (the job's table keys),
    ``seed`` (None: nothing was seeded), ``device`` (torch.device), ``amp`` (none | bf16 | fp16:
    what really runs on ``device``).
    """

    def __init__(self, stage: str, cfg: dict[str, Any], keys: dict[str, Any], seed: int | None,
                 device: "torch.device", amp: str, timer: Timer):  # noqa: F821
        self.stage, self.cfg, self.keys, self.seed = stage, cfg, dict(keys), seed
        self.device, self.amp = device, amp
        self._timer = timer

    def elapsed(self) -> float:
        """Wall seconds since the job started (device choice, seeding and reading included)."""
        return self._timer.elapsed()

    def write_metrics(self, path: str | os.PathLike, *, metrics: dict[str, Any], extra: dict[str, Any] | None = None,
                      keys: dict[str, Any] | None = None, wall_time_s: float | None = None,
                      protocol: str | None = None, device: str | None = None) -> dict[str, Any]:
        """This job's ``metrics.json`` through :func:`write_metrics`: the job's config slice,
        keys (``keys`` are added to / override them, e.g. a probe's ``labels_pct``) and device
        (``device`` overrides it: a scorer of features reports where they were computed);
        wall time = :meth:`elapsed` unless ``wall_time_s`` gives a share the stage measured
        (a job writing several records splits its one-off work between them)."""
        return write_metrics(path, stage=self.stage, metrics=metrics, config=self.cfg, keys={**self.keys, **(keys or {})},
                             device=device or str(self.device), wall_time_s=self.elapsed() if wall_time_s is None else wall_time_s,
                             protocol=protocol, extra=extra)


@contextlib.contextmanager
def stage_job(*, stage: str, cfg: dict[str, Any], keys: dict[str, Any], seed: int | None,
              threads: int | None = None, amp: str | bool | None = None) -> Iterator[StageJob]:
    """Set up one pipeline job and time it: every stage entry runs its work inside this block.

    In order, all inside the job's wall time: cap torch's CPU threads at ``threads`` (the rule's
    ``threads``; None leaves torch's default), pick the device of ``cfg["device"]``
    (:func:`pick_device`; a slice without ``device``, a numpy-only stage such as score_anomaly,
    leaves ``job.device`` None and never imports torch), set torch's deterministic algorithms to the
    slice's ``deterministic`` (:func:`set_deterministic`; absent = off, torch's default), resolve the configured ``amp`` to what runs there
    (:func:`effective_amp`), seed python/numpy/torch with ``seed`` (:func:`seed_everything`; None
    seeds nothing). One log line when the job starts and one when it finishes (with its wall
    time). ``keys`` identify the job in its table (dataset, method, seed, ...);
    :meth:`StageJob.write_metrics` records them. The other two things a stage uses: the split/cache
    reader :func:`defectbench.data.cache.read_split_images` and, for a trainer, the checkpoint
    policy :func:`defectbench.train.checkpointed`.

    >>> with stage_job(stage="pretraining", cfg={"device": "cpu"}, keys={"dataset": "d"}, seed=0) as job:
    ...     str(job.device), job.amp
    ('cpu', 'none')
    """
    label = " ".join(f"{k}={v}" for k, v in keys.items())
    with Timer() as timer:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        device = pick_device(cfg["device"]) if "device" in cfg else None
        if device is not None:
            set_deterministic(bool(cfg.get("deterministic")))
        mode = effective_amp(device, amp) if device is not None else "none"
        if seed is not None:
            seed_everything(seed)
        log.info("%s job %s: device %s, amp %s, seed %s, threads %s", stage, label, device, mode, seed,
                 threads or "default")
        yield StageJob(stage, cfg, keys, seed, device, mode, timer)
    log.info("%s job %s: done in %.1fs", stage, label, timer.seconds)
