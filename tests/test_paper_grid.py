"""config/paper.yaml: the full reproduction grid is complete, valid, and its DAG builds quickly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from defectbench.config import validate_config
from workflow_helpers import ROOT, snakemake, working_copy

PAPER = ROOT / "config" / "paper.yaml"
DEMO = ROOT / "config" / "config.yaml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _key_paths(tree: dict, prefix: tuple = ()) -> set[tuple]:
    out = set()
    for key, value in tree.items():
        path = prefix + (key,)
        out.add(path)
        if isinstance(value, dict):
            out |= _key_paths(value, path)
    return out


def paper_config() -> dict:
    """What the workflow sees with --configfile config/paper.yaml: the file alone (the Snakefile
    reads the demo config only without --configfile), schema defaults filled in."""
    return validate_config(_load(PAPER), ROOT / "config" / "schema.yaml")


def test_paper_sets_every_size_the_demo_shrinks():
    # The paper grid states its sizes explicitly instead of relying on schema defaults.
    demo_keys = {p for p in _key_paths(_load(DEMO)) if p[:1] != ("datasets",)}
    missing = sorted(".".join(p) for p in demo_keys - _key_paths(_load(PAPER)))
    assert not missing, f"config/paper.yaml must set: {missing}"


def test_paper_grid_contents():
    cfg = paper_config()
    ds = cfg["datasets"]
    by_task = {t: sorted(n for n, d in ds.items() if t in d["tasks"]) for t in ("classification", "anomaly", "clustering")}
    assert by_task["classification"] == ["deeppcb", "neu"]
    assert set(ds) == set(by_task["classification"]) | set(by_task["anomaly"])  # nothing idle (no demo data)
    mvtec = [n for n in ds if n.startswith("mvtec_")]
    visa = [n for n in ds if n.startswith("visa_")]
    assert len(mvtec) == 15 and len(visa) == 12
    assert by_task["anomaly"] == sorted(mvtec + visa)
    assert by_task["clustering"] == sorted(mvtec)
    assert set(cfg["contrastive"]["methods"]) == {"simclr", "supcon", "dcl", "hcl", "adnce", "decoupled", "fairkl", "gca", "diffcl"}
    assert cfg["backbones"] == ["resnet18", "resnet50"] and cfg["seeds"] == [0, 1, 2]
    assert 0.1 in cfg["label_fractions"] and 1.0 in cfg["label_fractions"]
    for section in ("diffusion", "supervised", "patchcore", "ddad"):
        assert cfg[section]["enabled"] is True, section
    assert cfg["contrastive"]["epochs"] == 300 and cfg["contrastive"]["batch_size"] == 256
    assert cfg["protocol"] == "clean"


@pytest.mark.parametrize("name", ["mvtec", "visa"])
def test_paper_datasets_match_the_data_configs(name):
    # config/datasets/{mvtec,visa}.yaml (data stage) hold the official URL + sha256 per category.
    reference = _load(ROOT / "config" / "datasets" / f"{name}.yaml")["datasets"]
    paper = {k: v for k, v in _load(PAPER)["datasets"].items() if k.startswith(f"{name}_")}
    assert set(paper) == set(reference)
    for key, entry in paper.items():
        for field in ("source", "layout", "category", "image_size", "paper_dataset", "resize", "resize_to"):
            assert entry[field] == reference[key][field], (key, field)


@pytest.mark.slow
def test_paper_dry_run_builds_quickly(tmp_path):
    project = working_copy(tmp_path)
    start = time.monotonic()
    proc = snakemake(project, "-n", "--quiet", "rules", "--configfile", "config/paper.yaml", timeout=300)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}
    total = counts.pop("total")
    assert total == sum(counts.values())
    n_cls = 2 * 9 * 2 * 3  # classification datasets x methods x backbones x seeds
    n_anomaly = 27 * 3  # MVTec + VisA categories x seeds
    # one probe job per encoder (the methods + the random-init control) writes every label fraction
    assert counts["linear_probe"] == 2 * (9 + 1) * 2 * 3
    assert counts["train_supervised"] == 2 * 2 * 3 * 2  # datasets x backbones x seeds x fractions
    # SimCLR anomaly features use one backbone (resnet18, B.1): no encoder is trained for nothing.
    assert counts["pretrain_contrastive"] == n_cls + n_anomaly
    assert counts["score_anomaly"] == n_anomaly  # one job per feature set runs all 4 scorers
    assert counts["patchcore"] == n_anomaly and counts["ddad"] == n_anomaly
    assert counts["cluster"] == 15 * 3  # MVTec categories x seeds (one job writes every weighting)
    # classification datasets: one size; MVTec/VisA: DDAD's 256 px and PatchCore's 224 px centre crop
    assert counts["build_cache"] == 2 + 27 * 2
    assert counts["diffusion_views"] == 2 * 3  # DiffCL: classification datasets x seeds
    print(f"paper grid: {total} jobs, DAG built in {elapsed:.1f} s")
    assert elapsed < 120, f"dry run of the paper grid took {elapsed:.0f} s"
