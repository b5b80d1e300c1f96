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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectbench import registry
from defectbench.data.cache import load_cache
from defectbench.data.splits import read_split
from defectbench.models.backbones import build_backbone
from defectbench.models.encoders import save_encoder
from defectbench.models.projector import ContrastiveModel
from defectbench.runtime import (
    DefectbenchError, effective_amp, pick_device, seed_everything, set_deterministic, write_metrics, write_parquet,
)
from defectbench.ssl.augment import AugmentParams, augment_batch, resolve_params, weaker
from defectbench.train import compiled, epoch_generator, fused_adam, job_checkpoint, train_loop

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


def _read_train(split_path: str | Path, cache_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, labels, uint8 images) of the split's train subset, sorted by row."""
    split = read_split(split_path)
    train = split[split["subset"] == "train"].sort_values("row")
    if train.empty:
        raise DefectbenchError(f"{split_path}: no train rows; check the dataset and its split")
    cache = load_cache(cache_path)
    rows = train["row"].to_numpy(dtype=np.int64)
    if rows.max() >= len(cache):
        raise DefectbenchError(f"{cache_path}: has {len(cache)} images but the split needs row {rows.max()}; rebuild the cache")
    return rows, train["label"].to_numpy(dtype=np.int64), np.ascontiguousarray(cache[rows])


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


def pretrain_contrastive(*, cache_path: str | Path, split_path: str | Path, encoder_path: str | Path,
                         history_path: str | Path, metrics_path: str | Path, cfg: dict[str, Any], dataset: str,
                         method: str, backbone: str, seed: int, task: str,
                         views_path: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train ``method`` on the train subset of the ``task`` split; write encoder.pt, history, metrics.

    ``cfg`` is the rule's config slice (``cfg["contrastive"]`` holds the stage's keys, plus
    ``device``); ``threads`` caps torch's CPU threads (the rule's ``threads``). Returns the
    metrics.json record.
    """
    if threads:
        torch.set_num_threads(int(threads))
    ccfg = cfg["contrastive"]
    mparams = method_params(method, ccfg)
    kwargs = loss_kwargs(method, ccfg)
    loss_fn = registry.implementation("contrastive_methods", method)
    # fairkl without views trains with FairKL weight 0 (documented); diffcl cannot.
    needs_views = views_path is not None and registry.reads_views(method, mparams, diffusion_enabled=True)
    if method == "diffcl" and not needs_views:
        raise DefectbenchError("diffcl needs the diffusion views file (results/pretrain/diffusion/.../views.npy); enable diffusion")
    variant = mparams["variant"] if method == "diffcl" else "views"
    real_prob = float(mparams["real_prob"]) if needs_views else 1.0

    t_start = time.perf_counter()
    device = pick_device(cfg["device"])
    amp = effective_amp(device, ccfg["amp"])
    set_deterministic(cfg.get("deterministic", False))  # params carry the key only when true
    seed_everything(seed)
    rows, labels_np, images_np = _read_train(split_path, cache_path)
    images = torch.from_numpy(images_np).to(device)
    labels = torch.as_tensor(labels_np.copy(), device=device)
    views = torch.from_numpy(_read_views(views_path, len(rows), images_np.shape[1:])).to(device) if needs_views else None
    n = len(rows)
    batch_size = int(ccfg["batch_size"])
    if n < 2:
        raise DefectbenchError(f"{split_path}: {n} train image(s); contrastive pretraining needs at least 2")
    pool = 2 * n if variant == "adainf" else n
    if batch_size > pool:
        log.warning("batch_size %d > %d training images: using %d", batch_size, pool, pool)
        batch_size = pool
    image_size = int(images_np.shape[1])
    preset, aug = resolve_params(ccfg["augment"], images)
    weak = weaker(aug)
    channels_last = bool(ccfg["channels_last"])

    net, dim = build_backbone(backbone, ccfg["pretrained"])
    model = ContrastiveModel(net, dim, list(ccfg["projector"])).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = fused_adam(model.parameters(), lr=float(ccfg["lr"]), weight_decay=float(ccfg["weight_decay"]), device=device)
    forward = compiled(model, bool(ccfg["compile"]), device, "contrastive.compile")
    epochs = int(ccfg["epochs"])
    steps_per_epoch = pool // batch_size
    scheduler = None
    if ccfg["schedule"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    # DiffCL's view-source draws use their own per-epoch stream, so that the augmentation draws
    # (and hence everything else) are exactly SimCLR's: with real_prob=1 DiffCL *is* SimCLR.
    source_gen: dict[str, torch.Generator] = {}

    def batches(epoch: int, gen: torch.Generator):
        source_gen["gen"] = epoch_generator(seed, epoch, device, stream=1)
        perm = torch.randperm(pool, generator=gen, device=device)
        for i in range(steps_per_epoch):
            yield perm[i * batch_size:(i + 1) * batch_size]

    def views_of(idx: torch.Tensor, params: AugmentParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(view 1, view 2, bias label of view 2: 1 where it is a diffusion variant) for train rows idx."""
        first = images[idx]
        second, generated = first, torch.zeros(len(idx), dtype=torch.bool, device=device)
        if views is not None and variant == "views":
            sgen = source_gen["gen"]
            generated = torch.rand(len(idx), generator=sgen, device=device) >= real_prob
            k = torch.randint(0, views.shape[1], (len(idx),), generator=sgen, device=device)
            second = torch.where(generated.view(-1, 1, 1, 1), views[idx, k], first)
        return augment_batch(first, params, gen), augment_batch(second, params, gen), generated

    def step(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if variant == "adainf":
            # Pool = n real images + n generated ones (a random variant of each real image).
            real_idx, gen_idx = idx[idx < n], idx[idx >= n] - n
            v1r, v2r, _ = views_of(real_idx, aug, gen)
            k = torch.randint(0, views.shape[1], (len(gen_idx),), generator=source_gen["gen"], device=device)
            g = views[gen_idx, k]
            v1 = torch.cat([v1r, augment_batch(g, weak, gen)])
            v2 = torch.cat([v2r, augment_batch(g, weak, gen)])
            generated = torch.cat([torch.zeros(len(real_idx), dtype=torch.bool, device=device),
                                   torch.ones(len(gen_idx), dtype=torch.bool, device=device)])
            batch_labels = torch.cat([labels[real_idx], labels[gen_idx]])
        else:
            v1, v2, generated = views_of(idx, aug, gen)
            batch_labels = labels[idx]
        x = torch.cat([v1, v2])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, z = forward(x)
        z1, z2 = z.float().chunk(2)
        extra: dict[str, Any] = {}
        if "labels" in registry.entry("contrastive_methods", method).reads:
            extra["labels"] = batch_labels
        if method == "fairkl":
            # bias label per view: view 1 is always real, view 2 generated where drawn from the variants
            extra["bias_labels"] = torch.cat([torch.zeros_like(generated), generated]).long() if needs_views else None
        loss = loss_fn(z1, z2, **extra, **kwargs)
        diagnostics = _cosine_diagnostics(z1, z2)
        if views is not None:
            diagnostics["generated_frac"] = float(generated.float().mean())
        return loss, diagnostics

    ckpt = job_checkpoint(Path(encoder_path).parent, cfg, {
        "cache": cache_path, "split": split_path, "views": views_path if needs_views else None})
    log.info("pretrain %s on %s/%s (%d images, %s, batch %d, %d epochs, device %s, amp %s, augment %s)",
             method, dataset, task, n, backbone, batch_size, epochs, device, amp, preset)
    history = train_loop(model, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp=amp,
                         checkpoint_path=ckpt, checkpoint_every=int(ccfg["checkpoint_every"]),
                         scheduler=scheduler, batch_size_of=len, log_prefix=f"[{method}/{dataset}] ")
    save_encoder(encoder_path, model.backbone, backbone, dim, image_size)
    write_parquet(history_path, history)
    seconds = float(history["seconds"].sum())
    images_seen = float((history["images_per_s"] * history["seconds"]).sum())
    record = write_metrics(
        metrics_path, stage="pretraining",
        metrics={"final_loss": float(history["loss"].iloc[-1]), "images_per_s": images_seen / max(seconds, 1e-9),
                 "train_seconds": seconds, "epochs": epochs, "train_steps": epochs * steps_per_epoch,
                 "train_images": n, "batch_size": batch_size},
        config=cfg, keys={"dataset": dataset, "method": method_label(method, needs_views, kwargs), "backbone": backbone,
                          "seed": seed, "task": task},
        device=str(device), wall_time_s=time.perf_counter() - t_start,
        extra={"amp": amp, "channels_last": channels_last, "deterministic": torch.are_deterministic_algorithms_enabled(),
               "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "augment_preset": preset, "augment": aug.as_dict(),
               "loss_params": kwargs, "diffcl_variant": variant if method == "diffcl" else None,
               "fairkl_bias": ("real_vs_generated" if needs_views else "none (weight 0: eps-SupInfoNCE only)")
               if method == "fairkl" else None,
               "note": "DiffCL is a reconstruction (no reference code released)" if method == "diffcl" else None},
    )
    ckpt.unlink(missing_ok=True)
    return record
