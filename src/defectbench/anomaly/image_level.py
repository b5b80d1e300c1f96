"""Image-level anomaly detection on frozen features (specs B): the anomaly_features and
score_anomaly stages.

1. :func:`extract_anomaly_features`: features of every image of the anomaly split (train,
   holdout, test) from one feature source, once, shared by every scorer:
   a contrastive encoder pretrained on the split's *nominal train* images, or ``pretrained``
   (the backbone as initialised).
2. :func:`score_anomaly`: every configured scorer (:mod:`defectbench.anomaly.scorers`) in one job
   (the split and features are read once; each scorer takes milliseconds to seconds, less than a
   job's start-up), each with its own outputs. A scorer is fitted on the train features; the
   threshold is the ``anomaly.threshold_quantile`` of the scores of the held-out nominal images;
   the test images are scored, evaluated and written by the anomaly protocol
   (:mod:`defectbench.anomaly.protocol`; clean protocol, specs B.2). With
   ``anomaly.refit_on_holdout`` the scorer is refitted on train + holdout before scoring the test
   set and the holdout threshold is kept (B.2 step 2).

   With ``protocol: faithful`` the reference's leaky numbers (threshold = 70th percentile of the
   *test* scores, weighted P/R/F1) are added with a ``leaky_`` prefix; the clean numbers are
   always there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from defectbench.anomaly.protocol import anomaly_subsets, evaluate, write_scores
from defectbench.anomaly.scorers import get_scorer
from defectbench.data.splits import read_split
from defectbench.runtime import DefectbenchError, Timer, atomic_path, stage_job, write_json

log = logging.getLogger("defectbench")


def extract_anomaly_features(*, cache_path: str, split_path: str, encoder_path: str | None, features_path: str,
                             cfg: dict[str, Any], features: str, backbone: str, seed: int) -> None:
    """Write ``features_path`` (.npz: ``rows`` int64, ``features`` float32 (N,d)) for every row of
    the anomaly split, plus ``<features_path>.json`` with the device and timing."""
    from defectbench.data.cache import SplitCache
    from defectbench.features import extract_features, load_feature_source  # torch: not needed for scoring

    acfg = cfg["anomaly"]
    keys = {"features": features, "backbone": backbone, "seed": seed}
    with stage_job(stage="anomaly", cfg=cfg, keys=keys, seed=seed, amp=acfg["amp"]) as job:
        data = SplitCache(split_path, cache_path)
        split = data.take(data.split)  # every row of the anomaly split, by row
        encoder, dim = load_feature_source(features, encoder_path=encoder_path, backbone=backbone,
                                           pretrained=acfg.get("pretrained"), device=job.device)
        feats = extract_features(encoder, split.images, job.device, int(acfg["feature_batch_size"]), job.amp)
        seconds = job.elapsed()
        with atomic_path(features_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rows=split.row_ids, features=feats)
        write_json(f"{features_path}.json", {"features": features, "backbone": backbone, "seed": seed,
                                             "device": str(job.device), "amp": job.amp, "feature_dim": dim,
                                             "n_images": len(split), "seconds": seconds})
    log.info("anomaly features %s: %d images x %d dims in %.1fs on %s", features, len(split), dim, seconds, job.device)


def _load_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["rows"], data["features"]
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: features not found; run the anomaly_features rule") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DefectbenchError(f"{path}: not a features file ({type(exc).__name__}); delete it and rerun") from None


def score_anomaly(*, features_path: str, split_path: str, outputs: dict[str, tuple[str, str]], cfg: dict[str, Any],
                  dataset: str, features: str, backbone: str, seed: int) -> dict[str, dict[str, Any]]:
    """The score_anomaly stage (module docstring): ``outputs`` maps each scorer to its
    (``metrics.json``, ``scores.parquet``) paths. ``cfg`` holds the ``anomaly`` section and
    ``protocol``. Returns the metrics record of each scorer."""
    acfg = cfg["anomaly"]
    protocol = cfg["protocol"]
    with stage_job(stage="anomaly", cfg=cfg, keys={"dataset": dataset, "seed": int(seed)}, seed=None) as job:
        with Timer() as load_timer:
            split = read_split(split_path)
            rows, feats = _load_features(features_path)
            position = pd.Series(np.arange(rows.size), index=rows)
            missing = ~split["row"].isin(position.index)
            if missing.any():
                raise DefectbenchError(f"{features_path}: lacks {int(missing.sum())} rows of {split_path}; delete it and rerun")
            parts = anomaly_subsets(split, split_path)
            x = {name: feats[position[part["row"]].to_numpy()] for name, part in parts.items()}
        try:  # device/timing of the feature extraction this job reused
            with open(f"{features_path}.json") as fh:
                provenance = json.load(fh)
        except (OSError, ValueError):
            provenance = {}
        memory = np.concatenate([x["train"], x["holdout"]]) if acfg["refit_on_holdout"] else x["train"]
        leaky_percentile = float(acfg["leaky_percentile"]) if protocol == "faithful" else None
        extra = {"feature_extraction": provenance, "n_train": int(len(parts["train"])),
                 "leaky_metrics": "leaky_* keys use the test-score percentile threshold (reference protocol, not valid)"
                 if protocol == "faithful" else None}
        records = {}
        for scorer, (metrics_path, scores_path) in outputs.items():
            with Timer() as timer:
                score = get_scorer(scorer, acfg)
                holdout_scores = score(x["train"], x["holdout"])
                test_scores = score(memory, x["test"])
                metrics = evaluate(parts["test"], test_scores, holdout_scores, quantile=acfg["threshold_quantile"],
                                   leaky_percentile=leaky_percentile)
                write_scores(scores_path, holdout=parts["holdout"], holdout_scores=holdout_scores,
                             test=parts["test"], test_scores=test_scores)
            # device: where the scored features were computed; wall time: this scorer plus the
            # shared reading of split and features
            records[scorer] = job.write_metrics(
                metrics_path, metrics=metrics, keys={"scorer": scorer, "features": features, "backbone": backbone},
                protocol=protocol, device=str(provenance.get("device", "cpu")),
                wall_time_s=load_timer.seconds + timer.seconds, extra=extra)
            log.info("anomaly %s/%s/%s: image AUROC %s, F1@q %.4f, F1-max (oracle) %s", scorer, features, dataset,
                     metrics["image_auroc"], metrics["f1"], metrics["f1_max_oracle"])
    return records
