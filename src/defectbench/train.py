"""The one training loop: AMP, per-step scheduler, EMA hooks, atomic checkpoints, exact resume.

Every trained model of the pipeline (contrastive encoders, the supervised baseline, the DDPM)
goes through :func:`train_loop`, so checkpointing, resuming and the per-epoch history behave
the same everywhere. A stage supplies two callables:

* ``batches(epoch, gen)`` yields the epoch's batches (shuffling with ``gen``);
* ``step(batch, gen)`` returns ``(loss, diagnostics)`` for one batch (augmenting with ``gen``).

The loop owns the rest: autocast, backward, GradScaler (fp16 on CUDA only), optimizer and
scheduler steps, ``extra_state[...].update(model)`` hooks (e.g. EMA), timing, history, and
checkpoints written atomically every ``checkpoint_every`` epochs and at the end.

Determinism: ``gen`` is a fresh ``torch.Generator`` per epoch seeded from ``(seed, epoch)``, and
the global torch/numpy/python RNG states travel in the checkpoint, so a run that is killed and
resumed reaches bit-identical weights on CPU to an uninterrupted run.

>>> import torch, tempfile, pathlib
>>> model = torch.nn.Linear(2, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> data = torch.ones(8, 2)
>>> def batches(epoch, gen):
...     yield from data[torch.randperm(8, generator=gen)].split(4)
>>> def step(batch, gen):
...     loss = model(batch).pow(2).mean()
...     return loss, {"out_mean": float(model(batch).mean())}
>>> ckpt = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
>>> hist = train_loop(model, opt, step, batches, epochs=2, seed=0, device=torch.device("cpu"),
...                   amp="none", checkpoint_path=ckpt, checkpoint_every=1)
>>> list(hist.columns)[:6], len(hist)
(['epoch', 'loss', 'lr', 'images_per_s', 'seconds', 'amp'], 2)
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from defectbench.optim import Adam
from defectbench.runtime import (
    DefectbenchError, Timer, autocast_context, config_hash, effective_amp, load_torch, save_torch,
)

log = logging.getLogger("defectbench")

HISTORY_COLUMNS = ("epoch", "loss", "lr", "images_per_s", "seconds", "amp")
# Called with each finished epoch's history row. A job's live MLflow run registers here
# (defectbench.tracking.tracked_job), so no stage has to pass a logger through.
EPOCH_END_CALLBACKS: list[Callable[[dict[str, Any]], None]] = []


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative names and bytes, sorted)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" if path.is_dir() else b"")
        with open(file, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def job_checkpoint(out_dir: str | Path, params: Any, inputs: dict[str, str | Path | None],
                   prefix: str = "checkpoint") -> Path:
    """The checkpoint path of exactly this job, in ``out_dir``.

    Keyed by the job's params *and* the content of its inputs (split, cache, views, model), so a
    job rerun after a config or data edit starts from scratch instead of resuming a run trained
    on other images. Checkpoints under any other key, and the partial temp files of a save that
    was interrupted (``.{prefix}-*.pt.*``, see :func:`defectbench.runtime.atomic_path`), are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {name: content_hash(path) for name, path in sorted(inputs.items()) if path is not None}
    ckpt = out_dir / f"{prefix}-{config_hash({'params': params, 'inputs': identity})}.pt"
    stale = [p for p in out_dir.glob(f"{prefix}-*.pt") if p != ckpt] + list(out_dir.glob(f".{prefix}-*.pt.*"))
    for path in stale:
        log.info("removing %s (another job's checkpoint or an interrupted save)", path)
        path.unlink(missing_ok=True)
    return ckpt


@contextlib.contextmanager
def checkpointed(out_dir: str | Path, params: Any, inputs: dict[str, str | Path | None],
                 prefix: str = "checkpoint") -> Iterator[Path]:
    """The checkpoint policy of every trainer: ``with checkpointed(...) as ckpt:`` train with
    ``train_loop(checkpoint_path=ckpt)`` and write the outputs inside the block.

    The path is :func:`job_checkpoint`'s (named from the job's identity, stale and partial
    checkpoints swept); it is removed when the block ends without an error (the outputs are
    written, nothing is left to resume) and kept when it raises, so a rerun resumes.
    """
    ckpt = job_checkpoint(out_dir, params, inputs, prefix)
    yield ckpt
    ckpt.unlink(missing_ok=True)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)``; ``stream`` > 0 gives further independent streams."""
    entropy = [int(seed), int(epoch)] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """The generator handed to ``batches`` and ``step`` in ``epoch`` (lives on ``device``).

    Stages that need a second random stream which must not shift the main one (e.g. DiffCL's
    choice of view source, so that DiffCL with real_prob=1 is exactly SimCLR) use ``stream=1..``.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(epoch_seed(seed, epoch, stream))
    return gen


# ----------------------------------------------------------------------------- RNG state (weights_only-safe)
def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python": [py_version, list(py_internal), py_gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
        "has_gauss": state["numpy_has_gauss"],
        "gauss": state["numpy_gauss"],
    })
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ----------------------------------------------------------------------------- the loop
def train_loop(model: nn.Module, optimizer: Adam | torch.optim.Optimizer,
               step: Callable[[Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
               batches: Callable[[int, torch.Generator], Iterable[Any]], *,
               epochs: int, seed: int, device: torch.device, amp: str, checkpoint_path: Path | None,
               checkpoint_every: int, scheduler: Any = None, extra_state: dict[str, Any] | None = None,
               batch_size_of: Callable[[Any], int] = len, log_prefix: str = "") -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs (resuming from ``checkpoint_path`` if it exists).

    Args:
        model: the module whose parameters ``optimizer`` updates (``model.train()`` each epoch).
        optimizer: :class:`defectbench.optim.Adam` (the pipeline's) or any torch optimizer.
        step: ``step(batch, gen) -> (loss, diagnostics)``; runs under autocast; diagnostics are
            floats averaged per epoch (sample-weighted) into the history.
        batches: ``batches(epoch, gen)`` yields the epoch's batches (0-based epoch).
        epochs: total number of epochs (not the number still to run).
        seed: seeds the per-epoch generator ``epoch_generator(seed, epoch, device)``.
        device: the training device; the generator lives there.
        amp: ``none`` | ``bf16`` | ``fp16`` (see :func:`defectbench.runtime.effective_amp`).
        checkpoint_path: where checkpoints go (atomically; :func:`checkpointed` names it); resumed
            from when present. None: no checkpoint (a fit of seconds, e.g. a linear probe).
        checkpoint_every: checkpoint after every this many epochs (and always after the last).
        scheduler: an LR scheduler stepped after every optimizer step, or None.
        extra_state: name -> object with ``state_dict``/``load_state_dict`` saved in checkpoints;
            an ``update(model)`` method, if present, is called after every optimizer step (EMA).
        batch_size_of: number of images in a batch (for images/s and weighting the means).
        log_prefix: text put in front of the per-epoch log line.

    Returns:
        The per-epoch history: epoch (1-based), loss, lr, images_per_s, seconds, amp, then the
        mean of each diagnostic, one row per epoch (including epochs done before a resume).
    """
    if epochs < 1:
        raise DefectbenchError(f"epochs: must be >= 1, got {epochs}")
    if checkpoint_every < 1:
        raise DefectbenchError(f"checkpoint_every: must be >= 1, got {checkpoint_every}")
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    mode = effective_amp(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=(mode == "fp16" and device.type == "cuda"))
    trainee = _Trainee(model, optimizer, scheduler, dict(extra_state or {}), scaler)
    start, history = 0, []
    if checkpoint_path is not None and checkpoint_path.exists():
        start, history = _resume(checkpoint_path, trainee, device)
        log.info("%sresumed from %s at epoch %d/%d", log_prefix, checkpoint_path, start, epochs)
    for epoch in range(start, epochs):
        row = _run_epoch(trainee, step, batches, epoch=epoch, seed=seed, device=device, mode=mode,
                         batch_size_of=batch_size_of, log_prefix=log_prefix)
        history.append(row)
        log.info("%sepoch %d/%d loss %.4f lr %.3g %.1f img/s %.1fs", log_prefix, epoch + 1, epochs,
                 row["loss"], row["lr"], row["images_per_s"], row["seconds"])
        if checkpoint_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            save_torch(checkpoint_path, {"epoch": epoch + 1, **trainee.state_dict(), "rng": _rng_state(device),
                                         "history": history})
        for callback in EPOCH_END_CALLBACKS:  # after this epoch's checkpoint, so a failing callback loses none
            callback(row)
    return history_frame(history)


@dataclass
class _Trainee:
    """What a checkpoint saves besides the epoch, the history and the RNG states."""

    model: nn.Module
    optimizer: Adam | torch.optim.Optimizer
    scheduler: Any
    extra_state: dict[str, Any]
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "extra_state": {name: obj.state_dict() for name, obj in self.extra_state.items()},
            "scaler": self.scaler.state_dict(),
        }


def _resume(checkpoint_path: Path, trainee: _Trainee, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """Load a checkpoint into ``trainee`` and the global RNGs; (epochs done, history so far)."""
    ckpt = load_torch(checkpoint_path, map_location=device)
    try:
        trainee.model.load_state_dict(ckpt["model"])
        trainee.optimizer.load_state_dict(ckpt["optimizer"])
        if trainee.scheduler is not None:
            trainee.scheduler.load_state_dict(ckpt["scheduler"])
        for name, obj in trainee.extra_state.items():
            obj.load_state_dict(ckpt["extra_state"][name])
        trainee.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], device)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise DefectbenchError(
            f"{checkpoint_path}: checkpoint does not match this model/config ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); delete it to start from scratch"
        ) from None
    return int(ckpt["epoch"]), [dict(row) for row in ckpt["history"]]


def _run_epoch(trainee: _Trainee, step: Callable[[Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
               batches: Callable[[int, torch.Generator], Iterable[Any]], *, epoch: int, seed: int, device: torch.device,
               mode: str, batch_size_of: Callable[[Any], int], log_prefix: str) -> dict[str, Any]:
    """Train one epoch (0-based ``epoch``) with its generator; the epoch's history row."""
    model, optimizer, scheduler, scaler = trainee.model, trainee.optimizer, trainee.scheduler, trainee.scaler
    hooks = [obj for obj in trainee.extra_state.values() if callable(getattr(obj, "update", None))]
    model.train()
    gen = epoch_generator(seed, epoch, device)
    sums: dict[str, float] = {}
    n_images = n_steps = 0
    with Timer() as timer:
        for batch in batches(epoch, gen):
            with autocast_context(device, mode):
                loss, diagnostics = step(batch, gen)
            if not torch.isfinite(loss.detach()).item():
                raise DefectbenchError(
                    f"{log_prefix}loss is {loss.item()} at epoch {epoch + 1} step {n_steps + 1}; "
                    "lower the learning rate or set amp: none"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            for hook in hooks:
                hook.update(model)
            b = int(batch_size_of(batch))
            n_images += b
            n_steps += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * b
            for key, value in diagnostics.items():
                sums[key] = sums.get(key, 0.0) + float(value) * b
        if n_steps == 0:
            raise DefectbenchError(
                f"{log_prefix}epoch {epoch + 1} produced no batches: the training set is smaller than the batch "
                "size (with drop_last); lower batch_size or add data"
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": sums.pop("loss") / n_images,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "images_per_s": n_images / max(timer.seconds, 1e-9),
        "seconds": timer.seconds,
        "amp": mode,
    }
    row.update({key: value / n_images for key, value in sums.items()})
    return row


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """History rows -> DataFrame with the fixed columns first, then diagnostics in first-seen order."""
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in HISTORY_COLUMNS and k not in extra]
    return pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, *extra])


# ----------------------------------------------------------------------------- faster steps
def compiled(model: nn.Module, enabled: bool, device: torch.device, key: str) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (the config switch ``key``), else ``model`` itself.

    The compiled module shares ``model``'s parameters: call it in the step, and keep handing
    ``model`` to the optimizer, checkpoints and encoder export (its state_dict keys are the
    plain ones). Compilation itself happens at the first call; what it needs (a C++ compiler
    for the CPU backend, Triton for CUDA) is checked here, so a missing piece is a clear error
    before training starts instead of a failure deep inside the first step.
    """
    if not enabled:
        return model
    if device.type == "cpu":
        import shutil

        import torch._inductor.config as inductor_config

        cxx = inductor_config.cpp.cxx[-1]  # the CXX environment variable, else g++
        if shutil.which(cxx) is None:
            raise DefectbenchError(f"{key}: true needs a C++ compiler for torch.compile on CPU ({cxx!r} not found); "
                                   f"install gcc/g++ (or point CXX at one) or set {key}: false")
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise DefectbenchError(f"{key}: true needs Triton for torch.compile on CUDA (not importable); "
                                   f"install the triton package matching torch or set {key}: false")
    try:
        compiled_model = torch.compile(model)
    except RuntimeError as exc:  # e.g. a Python version this torch cannot compile for
        raise DefectbenchError(f"{key}: torch.compile is unavailable here ({str(exc).splitlines()[0][:160]}); "
                               f"set {key}: false") from None
    log.info("%s: the model is compiled with torch.compile at its first step (this takes a while)", key)
    return compiled_model
