"""The pretrain_contrastive stage: one loop (:func:`defectbench.train.train_loop`), one loss per method.

Data: the ``train`` subset of the ``{task}`` split (rows sorted by ``row``), read from the
decode-once uint8 cache and kept on the training device; every batch is augmented there
(:mod:`defectbench.ssl.augment`). Model: backbone f (``build_backbone``) + projector g; the two
views of each image go through the network as one batch of 2B.

Methods (specs A.2, A.3): ``simclr`` (NT-Xent), ``supcon``, ``dcl``, ``hcl``, ``adnce``,
``decoupled``, ``fairkl`` (ε-SupInfoNCE + FairKL), ``gca`` (GCA-UOT) and ``diffcl``.
``supcon`` and ``fairkl`` are supervised contrastive methods: they read the train labels.

DiffCL **[reconstruction: no code was released, see specs A.0/A.2]** is SimCLR in every respect
except that view 2 of image i is drawn, with probability ``1 - real_prob``, from its K diffusion
variants (``views.npy``, uniform over k) instead of the real image; both views then get the same
augmentation. ``variant: adainf`` instead adds one diffusion variant per real image to the pool
(generated:real = 1:1, a fresh variant each epoch) and augments generated samples more weakly
(AdaInf-style; the generated samples are SDEdit variants of the real images, not unconditional
DDPM samples). FairKL's bias label is real (0) vs diffusion-generated (1) view when it is given
the views; without them its FairKL weight is effectively 0 (ε-SupInfoNCE only; recorded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectbench import registry
from defectbench.data.cache import read_split_images
from defectbench.models.backbones import build_backbone
from defectbench.models.encoders import save_encoder
from defectbench.models.projector import ContrastiveModel
from defectbench.optim import Adam, CosineSchedule
from defectbench.runtime import DefectbenchError, stage_job, write_parquet
from defectbench.ssl.augment import AugmentParams, augment_batch, resolve_params, weaker
from defectbench.train import checkpointed, compiled, epoch_generator, train_loop

log = logging.getLogger("defectbench")


def method_label(method: str, with_views: bool, loss_params: dict[str, Any]) -> str:
    """The name of what ran: ``eps_supinfonce`` for ``fairkl`` whose FairKL term is off (no
    generated views to take bias labels from, or ``weight`` 0), else ``method``.

    >>> method_label("fairkl", False, {"weight": 1.0}), method_label("fairkl", True, {"weight": 1.0})
    ('eps_supinfonce', 'fairkl')
    """
    if method == "fairkl" and (not with_views or float(loss_params["weight"]) == 0.0):
        return "eps_supinfonce"
    return method


def method_params(method: str, ccfg: dict[str, Any]) -> dict[str, Any]:
    """The method's parameters (defaults already merged in: see :func:`defectbench.params.method_params`)."""
    if method not in registry.CONTRASTIVE_METHODS:
        raise DefectbenchError(f"method: unknown {method!r}; choose from {', '.join(registry.CONTRASTIVE_METHODS)}")
    return ccfg["method_params"][method]


def loss_kwargs(method: str, ccfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the method's loss: its parameters minus the data-side (view) keys, plus
    the shared ``temperature`` when the method reads it (registry ``reads``)."""
    kwargs = {k: v for k, v in method_params(method, ccfg).items() if k not in registry.VIEW_PARAM_KEYS}
    if "temperature" in registry.entry("contrastive_methods", method).reads:
        kwargs["temperature"] = float(ccfg["temperature"])
    return kwargs


def _read_views(views_path: str | Path, n_train: int, image_shape: tuple[int, ...]) -> np.ndarray:
    try:
        views = np.load(views_path, mmap_mode="r")
    except (FileNotFoundError, ValueError) as exc:
        raise DefectbenchError(f"{views_path}: diffusion views not readable ({type(exc).__name__}); rerun diffusion_views") from None
    if views.dtype != np.uint8 or views.ndim != 5 or views.shape[0] != n_train or views.shape[2:] != image_shape:
        raise DefectbenchError(
            f"{views_path}: expected uint8 ({n_train}, K, {', '.join(map(str, image_shape))}) views aligned with the "
            f"train rows, got {views.dtype} {views.shape}; rerun diffusion_views for this split"
        )
    return np.array(views)  # a writable in-memory copy (the file is memory-mapped read-only)


def _cosine_diagnostics(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    """Mean cosine of positive pairs and of all other pairs (alignment / spread of the embedding)."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)
        n = z1.shape[0]
        sim = z @ z.T
        pos = sim.diagonal(n).mean()
        total = sim.sum() - sim.diagonal().sum() - 2 * sim.diagonal(n).sum()
        neg = total / (2 * n * (2 * n - 2))
    return {"pos_cos": float(pos), "neg_cos": float(neg)}


@dataclass(frozen=True)
class _MethodPlan:
    """What a contrastive method needs, settled before the job starts (config errors first)."""

    loss_kwargs: dict[str, Any]
    needs_views: bool  # it reads the diffusion views file
    variant: str  # diffcl's "views" | "adainf"; "views" for every other method
    real_prob: float  # probability that view 2 is the real image (1.0 without views)
    label: str  # the method name its records carry (method_label)


def _plan(method: str, ccfg: dict[str, Any], views_path: str | Path | None) -> _MethodPlan:
    mparams = method_params(method, ccfg)
    kwargs = loss_kwargs(method, ccfg)
    # fairkl without views trains with FairKL weight 0 (documented); diffcl cannot.
    needs_views = views_path is not None and registry.reads_views(method, mparams, diffusion_enabled=True)
    if method == "diffcl" and not needs_views:
        raise DefectbenchError("diffcl needs the diffusion views file (results/pretrain/diffusion/.../views.npy); enable diffusion")
    return _MethodPlan(kwargs, needs_views, mparams["variant"] if method == "diffcl" else "views",
                       float(mparams["real_prob"]) if needs_views else 1.0, method_label(method, needs_views, kwargs))


class _ContrastiveSteps:
    """The ``batches`` and ``step`` callables of :func:`defectbench.train.train_loop` for one method.

    Holds the train images (uint8, on the device), their labels and the diffusion views (or None).
    Each epoch draws a permutation of the pool (n real images; 2n with AdaInf's generated ones)
    with the epoch generator; DiffCL's view-source draws use their own per-epoch stream
    (``epoch_generator(..., stream=1)``), so that the augmentation draws (and hence everything
    else) are exactly SimCLR's: with real_prob=1 DiffCL *is* SimCLR.
    """

    def __init__(self, forward: torch.nn.Module, method: str, plan: _MethodPlan, images: torch.Tensor,
                 labels: torch.Tensor, views: torch.Tensor | None, *, aug: AugmentParams, batch_size: int,
                 channels_last: bool, seed: int):
        self.forward, self.method, self.plan = forward, method, plan  # the model, or its torch.compile
        self.images, self.labels, self.views = images, labels, views
        self.aug, self.weak = aug, weaker(aug)
        self.n = len(images)
        self.pool = 2 * self.n if plan.variant == "adainf" else self.n
        self.batch_size, self.channels_last, self.seed = batch_size, channels_last, seed
        self.steps_per_epoch = self.pool // batch_size
        self.loss_fn = registry.implementation("contrastive_methods", method)
        self.reads_labels = "labels" in registry.entry("contrastive_methods", method).reads
        self.source_gen: torch.Generator | None = None

    def batches(self, epoch: int, gen: torch.Generator):
        device = self.images.device
        self.source_gen = epoch_generator(self.seed, epoch, device, stream=1)
        perm = torch.randperm(self.pool, generator=gen, device=device)
        for i in range(self.steps_per_epoch):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]

    def _views_of(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(view 1, view 2, bias label of view 2: 1 where it is a diffusion variant) for train rows idx."""
        first = self.images[idx]
        second, generated = first, torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
        if self.views is not None and self.plan.variant == "views":
            generated = torch.rand(len(idx), generator=self.source_gen, device=idx.device) >= self.plan.real_prob
            k = torch.randint(0, self.views.shape[1], (len(idx),), generator=self.source_gen, device=idx.device)
            second = torch.where(generated.view(-1, 1, 1, 1), self.views[idx, k], first)
        return augment_batch(first, self.aug, gen), augment_batch(second, self.aug, gen), generated

    def _adainf_views(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(view 1, view 2, generated, labels) of a batch of AdaInf's pool: indices < n are real
        images, the others a random diffusion variant of real image ``idx - n``, weakly augmented."""
        real_idx, gen_idx = idx[idx < self.n], idx[idx >= self.n] - self.n
        v1r, v2r, _ = self._views_of(real_idx, gen)
        k = torch.randint(0, self.views.shape[1], (len(gen_idx),), generator=self.source_gen, device=idx.device)
        g = self.views[gen_idx, k]
        v1 = torch.cat([v1r, augment_batch(g, self.weak, gen)])
        v2 = torch.cat([v2r, augment_batch(g, self.weak, gen)])
        generated = torch.cat([torch.zeros(len(real_idx), dtype=torch.bool, device=idx.device),
                               torch.ones(len(gen_idx), dtype=torch.bool, device=idx.device)])
        return v1, v2, generated, torch.cat([self.labels[real_idx], self.labels[gen_idx]])

    def step(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if self.plan.variant == "adainf":
            v1, v2, generated, batch_labels = self._adainf_views(idx, gen)
        else:
            v1, v2, generated = self._views_of(idx, gen)
            batch_labels = self.labels[idx]
        x = torch.cat([v1, v2])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, z = self.forward(x)
        z1, z2 = z.float().chunk(2)
        extra: dict[str, Any] = {}
        if self.reads_labels:
            extra["labels"] = batch_labels
        if self.method == "fairkl":
            # bias label per view: view 1 is always real, view 2 generated where drawn from the variants
            extra["bias_labels"] = torch.cat([torch.zeros_like(generated), generated]).long() if self.plan.needs_views else None
        loss = self.loss_fn(z1, z2, **extra, **self.plan.loss_kwargs)
        diagnostics = _cosine_diagnostics(z1, z2)
        if self.views is not None:
            diagnostics["generated_frac"] = float(generated.float().mean())
        return loss, diagnostics


def _optimizer(model: torch.nn.Module, ccfg: dict[str, Any], total_steps: int):
    """(fused Adam, cosine-per-step schedule or None) of the ``contrastive`` section."""
    optimizer = Adam(model.parameters(), lr=float(ccfg["lr"]), weight_decay=float(ccfg["weight_decay"]))
    scheduler = (CosineSchedule(optimizer, total_steps)
                 if ccfg["schedule"] == "cosine" else None)
    return optimizer, scheduler


def pretrain_contrastive(*, cache_path: str | Path, split_path: str | Path, encoder_path: str | Path,
                         history_path: str | Path, metrics_path: str | Path, cfg: dict[str, Any], dataset: str,
                         method: str, backbone: str, seed: int, task: str,
                         views_path: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train ``method`` on the train subset of the ``task`` split; write encoder.pt, history, metrics.

    ``cfg`` is the rule's config slice (``cfg["contrastive"]`` holds the stage's keys, plus
    ``device``); ``threads`` caps torch's CPU threads (the rule's ``threads``). Returns the
    metrics.json record.
    """
    ccfg = cfg["contrastive"]
    plan = _plan(method, ccfg, views_path)
    keys = {"dataset": dataset, "method": plan.label, "backbone": backbone, "seed": seed, "task": task}
    with stage_job(stage="pretraining", cfg=cfg, keys=keys, seed=seed, threads=threads, amp=ccfg["amp"]) as job:
        train = read_split_images(split_path, cache_path, "train", min_rows=1)
        n = len(train)
        if n < 2:
            raise DefectbenchError(f"{split_path}: {n} train image(s); contrastive pretraining needs at least 2")
        images = torch.from_numpy(train.images).to(job.device)
        labels = torch.as_tensor(train.labels, device=job.device)
        views = (torch.from_numpy(_read_views(views_path, n, train.images.shape[1:])).to(job.device)
                 if plan.needs_views else None)
        pool = 2 * n if plan.variant == "adainf" else n
        batch_size = int(ccfg["batch_size"])
        if batch_size > pool:
            log.warning("batch_size %d > %d training images: using %d", batch_size, pool, pool)
            batch_size = pool
        preset, aug = resolve_params(ccfg["augment"], images)
        channels_last = bool(ccfg["channels_last"])
        net, dim = build_backbone(backbone, ccfg["pretrained"])
        model = ContrastiveModel(net, dim, list(ccfg["projector"])).to(job.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = compiled(model, bool(ccfg["compile"]), job.device, "contrastive.compile")
        steps = _ContrastiveSteps(forward, method, plan, images, labels, views, aug=aug, batch_size=batch_size,
                                  channels_last=channels_last, seed=seed)
        epochs = int(ccfg["epochs"])
        optimizer, scheduler = _optimizer(model, ccfg, epochs * steps.steps_per_epoch)
        log.info("pretrain %s on %s/%s (%d images, %s, batch %d, %d epochs, device %s, amp %s, augment %s)",
                 method, dataset, task, n, backbone, batch_size, epochs, job.device, job.amp, preset)
        with checkpointed(Path(encoder_path).parent, cfg, {
                "cache": cache_path, "split": split_path, "views": views_path if plan.needs_views else None}) as ckpt:
            history = train_loop(model, optimizer, steps.step, steps.batches, epochs=epochs, seed=seed,
                                 device=job.device, amp=job.amp, checkpoint_path=ckpt,
                                 checkpoint_every=int(ccfg["checkpoint_every"]), scheduler=scheduler,
                                 batch_size_of=len, log_prefix=f"[{method}/{dataset}] ")
            save_encoder(encoder_path, model.backbone, backbone, dim, int(train.images.shape[1]))
            write_parquet(history_path, history)
            seconds = float(history["seconds"].sum())
            images_seen = float((history["images_per_s"] * history["seconds"]).sum())
            return job.write_metrics(
                metrics_path,
                metrics={"final_loss": float(history["loss"].iloc[-1]), "images_per_s": images_seen / max(seconds, 1e-9),
                         "train_seconds": seconds, "epochs": epochs, "train_steps": epochs * steps.steps_per_epoch,
                         "train_images": n, "batch_size": batch_size},
                extra={"amp": job.amp, "channels_last": channels_last,
                       "deterministic": torch.are_deterministic_algorithms_enabled(),
                       "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                       "augment_preset": preset, "augment": aug.as_dict(),
                       "loss_params": plan.loss_kwargs, "diffcl_variant": plan.variant if method == "diffcl" else None,
                       "fairkl_bias": ("real_vs_generated" if plan.needs_views else "none (weight 0: eps-SupInfoNCE only)")
                       if method == "fairkl" else None,
                       "note": "DiffCL is a reconstruction (no reference code released)" if method == "diffcl" else None},
            )
