"""One real Snakemake run (not a dry run) of the data stage: ELPV from its PyPI package (small
max_per_class) and the three full archives of ../shared/data (skipped where they are absent, never
under CI), tiny image_size. Counts must match ../shared/data/README.md; a second run has nothing to do; a split-only config change reruns only
the splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import FULL_ARCHIVE_SHA256
from workflow_helpers import snakemake, working_copy, write_config

pytestmark = pytest.mark.slow

SIZE = 32
SEED = 0


def _config(shared: Path) -> dict:
    def archive(name: str) -> dict:
        return {"kind": "archive", "path": str(shared / name), "sha256": FULL_ARCHIVE_SHA256[name]}

    return {
        "seeds": [SEED],
        "datasets": {
            "elpv": {"source": {"kind": "pip", "package": "elpv-dataset"}, "layout": "elpv", "image_size": SIZE,
                     "max_per_class": 10, "tasks": ["classification", "anomaly", "clustering"]},
            "neu": {"source": archive("neu-steel.tar.gz"), "layout": "imagefolder", "image_size": SIZE,
                    "classes": ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"],
                    "tasks": ["classification"]},
            "magnetic_tile": {"source": archive("magnetic-tile.tar.gz"), "layout": "magnetic_tile", "image_size": SIZE,
                              "tasks": ["classification", "anomaly", "clustering"]},
            "deeppcb": {"source": archive("deeppcb.tar.gz"), "layout": "deeppcb", "image_size": SIZE,
                        "tasks": ["classification"]},
        },
    }


def _targets(cfg: dict) -> list[str]:
    out = []
    for name, ds in cfg["datasets"].items():
        out.append(f"results/data/{name}/manifest.parquet")
        out += [f"results/data/{name}/splits/{t}-seed{SEED}.parquet" for t in ds["tasks"]]
        out += [f"results/data/{name}/cache-{SIZE}.npy", f"results/data/{name}/masks-{SIZE}.npy"]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, full_archives):
    project = working_copy(tmp_path_factory.mktemp("data_wf"))
    # Only the data targets are requested; rule files of stages not written yet are stubbed in
    # this temporary copy so the Snakefile parses (the real files are never touched).
    for line in (project / "Snakefile").read_text().splitlines():
        if line.startswith("include:"):
            inc = project / line.split('"')[1]
            if not inc.exists():
                inc.write_text("")
    cfg = _config(full_archives)
    cfgfile = write_config(project, cfg, "data-test.yaml")
    targets = _targets(cfg)
    snakemake(project, *targets, "--cores", "2", "--configfile", str(cfgfile), timeout=600)
    return project, cfg, cfgfile, targets


def _manifest(project: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(project / "results" / "data" / name / "manifest.parquet")


def test_counts_match_shared_readme(run):
    project = run[0]
    neu = _manifest(project, "neu")
    assert len(neu) == 1800 and neu.class_name.value_counts().to_dict() == {
        c: 300 for c in ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]}
    mt = _manifest(project, "magnetic_tile")
    assert len(mt) == 1344 and (~mt.is_anomalous).sum() == 952
    assert mt.class_name.value_counts().to_dict() == {"Free": 952, "Blowhole": 115, "Break": 85, "Uneven": 103, "Crack": 57, "Fray": 32}
    assert mt.mask_path.notna().all()
    pcb = _manifest(project, "deeppcb")  # every annotated box of the 1500 test images
    assert pcb.class_name.value_counts().to_dict() == {
        "mousebite": 1965, "open": 1942, "spur": 1625, "short": 1506, "pin_hole": 1501, "spurious_copper": 1474}
    assert len(pcb) == 10013 and pcb.source_split.value_counts().to_dict() == {"train": 6873, "test": 3140}
    elpv = _manifest(project, "elpv")
    assert elpv.class_name.value_counts().to_dict() == {"prob_0": 10, "prob_33": 10, "prob_67": 10, "prob_100": 10}
    marker = json.loads((project / "resources/datasets/elpv/.fetched.json").read_text())
    assert marker["kind"] == "pip" and marker["files_verified"] >= 2624


def test_caches_match_manifests(run):
    project, cfg = run[0], run[1]
    for name in cfg["datasets"]:
        n = len(_manifest(project, name))
        images = np.load(project / f"results/data/{name}/cache-{SIZE}.npy", mmap_mode="r")
        masks = np.load(project / f"results/data/{name}/masks-{SIZE}.npy", mmap_mode="r")
        assert images.shape == (n, SIZE, SIZE, 3) and images.dtype == np.uint8, name
        assert masks.shape == (n, SIZE, SIZE) and set(np.unique(masks)) <= {0, 1}, name
        assert images[: min(n, 64)].std() > 5, name  # real pixels, not zeros
    mt = _manifest(project, "magnetic_tile")
    masks = np.load(project / f"results/data/magnetic_tile/masks-{SIZE}.npy")
    assert masks[~mt.is_anomalous.to_numpy()].sum() == 0 and masks[mt.is_anomalous.to_numpy()].sum() > 0


def test_splits(run):
    project = run[0]
    split = lambda name, task: pd.read_parquet(project / f"results/data/{name}/splits/{task}-seed{SEED}.parquet")  # noqa: E731
    neu = split("neu", "classification")
    assert neu[neu.subset == "test"].groupby("label_name").size().to_dict() == {c: 60 for c in neu.label_name.unique()}
    pcb = split("deeppcb", "classification")  # the official trainval/test lists
    assert (pcb.subset == "test").sum() == 3140
    mt = split("magnetic_tile", "anomaly")
    assert mt.groupby("subset").size().to_dict() == {"train": 610, "holdout": 152, "test": 190 + 392}
    clu = split("magnetic_tile", "clustering")
    assert clu.row.tolist() == mt.row[mt.subset == "test"].tolist()
    assert set(clu.label_name) == {"good", "Blowhole", "Break", "Crack", "Fray", "Uneven"}
    for task in ("classification", "anomaly", "clustering"):
        assert len(split("elpv", task)) > 0
    # logs written for each rule
    assert (project / "logs/build_cache/neu/32.log").read_text().count("cache 32px") >= 1


def test_rerun_is_noop_and_split_change_reruns_only_splits(run):
    project, cfg, cfgfile, targets = run
    proc = snakemake(project, *targets, "-n", "--cores", "2", "--configfile", str(cfgfile))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    changed = yaml.safe_load(cfgfile.read_text())
    changed["datasets"]["elpv"]["test_fraction"] = 0.3
    other = write_config(project, changed, "data-test-changed.yaml")
    proc = snakemake(project, *targets, "-n", "--cores", "2", "--configfile", str(other))
    out = proc.stdout + proc.stderr
    assert "make_split" in out
    for rule in ("fetch_dataset", "build_manifest", "build_cache"):
        assert f"rule {rule}" not in out and f"{rule} " not in out.split("Job stats")[-1].split("Reasons")[0], rule
