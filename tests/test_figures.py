"""Figures: pure helpers against hand-computed values, and every figure family from synthetic job files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from defectbench import figures, tables
from defectbench.runtime import write_metrics, write_parquet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grad_cam_equals_cam_for_gap_linear_head():
    # conv -> ReLU -> global average pool -> linear: Grad-CAM reduces to CAM, relu(sum_k W[c,k] A_k)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    linear = nn.Linear(4, 2)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    x = torch.randn(2, 3, 6, 6)
    cams = figures.grad_cam(model, x, targets=torch.tensor([1, 0]))
    with torch.no_grad():
        a = torch.relu(conv(x))
        for i, c in enumerate((1, 0)):
            expected = torch.relu((linear.weight[c].view(4, 1, 1) * a[i]).sum(0))
            expected = expected / expected.max()
            assert np.allclose(cams[i], expected.numpy(), atol=1e-5)
    assert cams.shape == (2, 6, 6) and cams.max() == pytest.approx(1.0)


def test_gallery_composes_cells_overlays_and_outlines_into_one_image(tmp_path):
    """The gallery is one composed image: each cell's own pixels, the heat map blended at 45% jet,
    the mask outline in green; a cell the row does not fill stays white."""
    import matplotlib.pyplot as plt

    images = np.zeros((3, 8, 8, 3), np.uint8)
    images[0, ..., 0] = 255  # red
    images[1, ..., 2] = 255  # blue
    images[2, ..., 1] = 128  # dark green, under a mask outline
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    out = figures._gallery(images, [[0, 1], [2]], ["a", "b"], [["red", "blue"], ["masked"]], "t", tmp_path / "g.png",
                           overlays=[[None, np.ones((4, 4), np.float32)], [None]], outlines=[[None, None], [mask]])
    assert out.read_bytes().startswith(PNG_MAGIC)
    px = np.round(plt.imread(out)[..., :3] * 255).astype(int).reshape(-1, 3)

    def count(rgb, tol=1):
        return int((np.abs(px - np.asarray(rgb)).max(1) <= tol).sum())

    blend = np.round((0.55 * np.array([0, 0, 1.0]) + 0.45 * np.array(plt.get_cmap("jet")(1.0)[:3])) * 255)
    assert count((255, 0, 0)) > 1000  # the red cell, at ~100 px per cell side
    assert count(blend) > 1000 and count((0, 0, 255)) == 0  # the blue cell is all overlay
    assert count((0, 128, 0)) > 500 and count((0, 255, 0), tol=40) > 20  # the green cell and its lime outline


def test_worst_failures_per_class():
    pred = pd.DataFrame({
        "row": [10, 11, 12, 13, 14],
        "y_true": [0, 0, 1, 1, 0],
        "y_pred": [1, 1, 1, 0, 0],
        "proba_0": [0.4, 0.1, 0.2, 0.7, 0.9],
        "proba_1": [0.6, 0.9, 0.8, 0.3, 0.1],
    })
    out = figures.worst_failures(pred, n=3)
    # class 0: FN = true 0 predicted 1 (rows 10, 11), lowest p0 first -> 11 (0.1), 10 (0.4); FP = row 13
    assert out[0] == {"fn": [11, 10], "fp": [13]}
    # class 1: FN = row 13; FP = predicted 1 but true 0, highest p1 first -> 11 (0.9), 10 (0.6)
    assert out[1] == {"fn": [13], "fp": [11, 10]}


def test_worst_failures_of_a_class_without_failures_are_empty():
    # class 2 is never predicted and never true: no failures (an empty selection must stay empty,
    # not pick up every row with a missing row id)
    pred = pd.DataFrame({"row": [4, 7], "y_true": [0, 1], "y_pred": [1, 1],
                         "proba_0": [0.3, 0.2], "proba_1": [0.6, 0.7], "proba_2": [0.1, 0.1]})
    out = figures.worst_failures(pred, n=3)
    assert out == {0: {"fn": [4], "fp": []}, 1: {"fn": [], "fp": [4]}, 2: {"fn": [], "fp": []}}


def test_worst_anomaly_failures_respects_threshold():
    scores = pd.DataFrame({"row": [1, 2, 3, 4, 5, 6], "subset": ["test"] * 5 + ["holdout"],
                           "label": [0, 0, 1, 1, 0, 0], "score": [0.9, 0.2, 0.3, 0.8, 0.6, 5.0]})
    out = figures.worst_anomaly_failures(scores, threshold=0.5, n=4)
    assert out == {"fp": [1, 5], "fn": [3]}  # holdout row 6 is never a test failure


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A tiny results tree: manifest, split, cache, masks, 2 probe jobs at 2 fractions, 2 anomaly jobs."""
    rng = np.random.default_rng(0)
    root = tmp_path
    data = root / "results" / "data" / "toy"
    n, size = 40, 16
    labels = np.arange(n) % 3
    manifest = pd.DataFrame({"label": labels, "class_name": [f"c{k}" for k in labels]})
    write_parquet(data / "manifest.parquet", manifest)
    split = pd.DataFrame({"row": np.arange(n), "subset": ["train"] * 20 + ["test"] * 20, "label": labels})
    write_parquet(data / "splits" / "classification-seed0.parquet", split)
    np.save(data / "cache-16.npy", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 4:8, 4:8] = 1
    np.save(data / "masks-16.npy", masks)
    metrics = []
    test_rows = np.arange(20, 40)
    for method in ("simclr", "supervised"):
        for pct, f1 in ((10, 0.5), (100, 0.8)):
            job = root / "results" / "probe" / method / "toy" / "resnet18" / "seed0" / f"labels{pct}"
            proba = rng.dirichlet(np.ones(3), size=20)
            write_parquet(job / "predictions.parquet", pd.DataFrame(
                {"row": test_rows, "y_true": labels[test_rows], "y_pred": proba.argmax(1),
                 **{f"proba_{k}": proba[:, k] for k in range(3)}}))
            write_metrics(job / "metrics.json", stage="classification", metrics={"macro_f1": f1, "accuracy": f1},
                          config={}, keys={"dataset": "toy", "method": method, "backbone": "resnet18", "seed": 0,
                                           "labels_pct": pct}, device="cpu", wall_time_s=1.0)
            metrics.append(job / "metrics.json")
    is_anom = (test_rows % 2).astype(int)
    for scorer in ("knn", "patchcore"):
        job = root / "results" / "anomaly" / scorer / "toy" / "seed0"
        score = rng.normal(size=20) + is_anom
        map_index = np.full(20, -1)
        map_index[:4] = np.arange(4)
        write_parquet(job / "scores.parquet", pd.DataFrame(
            {"row": test_rows, "subset": "test", "label": is_anom, "score": score, "map_index": map_index}))
        if scorer == "patchcore":
            np.save(job / "maps.npy", rng.random((4, 8, 8)).astype(np.float32))
        write_metrics(job / "metrics.json", stage="anomaly", metrics={"image_auroc": 0.7, "threshold": 0.5},
                      config={}, keys={"dataset": "toy", "scorer": scorer, "seed": 0}, device="cpu", wall_time_s=1.0)
        metrics.append(job / "metrics.json")
    tables.write_tables(metrics, root / "results" / "tables", root=root)
    return root


def test_make_figures_from_job_files(project: Path):
    out = project / "results" / "figures"
    written = figures.make_figures(project / "results" / "tables", out, {"toy": 16}, root=project)
    names = {p.name for p in written}
    expected = {
        "label-efficiency--toy.png", "confusion--toy-labels100.png", "failures--toy-classification.png",
        "roc-pr--toy.png", "score-hist--toy.png", "failures--toy-anomaly.png", "anomaly-maps--toy-patchcore.png",
    }
    assert expected <= names, sorted(names)
    for path in written:
        assert path.parent == out and path.read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_make_figures_with_nothing(tmp_path: Path):
    assert figures.make_figures(tmp_path / "missing-tables", tmp_path / "figs", {}, root=tmp_path) == []
    assert (tmp_path / "figs").is_dir()



def _declared(project: Path, *left_out: str) -> list[str]:
    """Every file of the project as the figures rule would declare it (relative), but `left_out`."""
    files = [p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()]
    return [f for f in files if f not in left_out]


def test_a_figure_without_its_file_says_which_and_why(project: Path, caplog):
    (project / "results" / "data" / "toy" / "cache-16.npy").unlink()
    with caplog.at_level("WARNING", logger="defectbench"):
        names = {p.name for p in figures.make_figures(project / "results" / "tables", project / "figs", {"toy": 16},
                                                      root=project)}
    # the galleries need the images; the curves and matrices do not
    assert "failures--toy-classification.png" not in names and "anomaly-maps--toy-patchcore.png" not in names
    assert {"confusion--toy-labels100.png", "roc-pr--toy.png", "score-hist--toy.png"} <= names
    assert "failures--toy-classification.png drawn without results/data/toy/cache-16.npy (missing)" in caplog.text


def test_figures_read_only_declared_files(project: Path, caplog):
    undeclared = "results/probe/simclr/toy/resnet18/seed0/labels100/predictions.parquet"
    with caplog.at_level("WARNING", logger="defectbench"):
        written = figures.make_figures(project / "results" / "tables", project / "figs", {"toy": 16}, root=project,
                                       declared=_declared(project, undeclared))
    assert f"confusion--toy-labels100.png drawn without {undeclared} (not an input of the figures rule)" in caplog.text
    # the other job's matrix is still drawn; with every file declared none is left out for that
    assert "confusion--toy-labels100.png" in {p.name for p in written}
    caplog.clear()
    with caplog.at_level("WARNING", logger="defectbench"):
        figures.make_figures(project / "results" / "tables", project / "figs", {"toy": 16}, root=project,
                             declared=_declared(project))
    assert "not an input" not in caplog.text


def test_an_unreadable_file_stops_the_figures(project: Path):
    """Only a missing or undeclared file is reported and drawn around; a corrupt one is an error."""
    (project / "results" / "anomaly" / "knn" / "toy" / "seed0" / "scores.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception, match="[Pp]arquet"):
        figures.make_figures(project / "results" / "tables", project / "figs", {"toy": 16}, root=project)

def test_tsne_plot_and_label_efficiency(tmp_path: Path):
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 15)
    feats = rng.normal(size=(30, 8)) + labels[:, None] * 3
    path = figures.plot_tsne([("simclr", feats), ("diffcl", feats * 2)], labels, ["a", "b"], "toy",
                             figures.figure_path(tmp_path, "tsne", "toy"))
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(Exception, match="unknown figure kind"):
        figures.figure_path(tmp_path, "pie", "x")


def test_tsne_and_gradcam_from_real_encoder_files(project: Path):
    from defectbench.models.backbones import build_backbone
    from defectbench.models.encoders import save_encoder
    from defectbench.runtime import save_torch

    torch.manual_seed(0)
    net, dim = build_backbone("resnet18")
    job = project / "results" / "pretrain" / "simclr" / "toy" / "classification" / "resnet18" / "seed0"
    save_encoder(job / "encoder.pt", net, "resnet18", dim, 16)
    write_metrics(job / "metrics.json", stage="pretraining", metrics={"loss": 1.0}, config={},
                  keys={"dataset": "toy", "method": "simclr", "backbone": "resnet18", "seed": 0, "task": "classification"},
                  device="cpu", wall_time_s=1.0)
    probe_dir = project / "results" / "probe" / "simclr" / "toy" / "resnet18" / "seed0" / "labels100"
    save_torch(probe_dir / "probe.pt", {"weight": torch.randn(3, dim), "bias": torch.zeros(3),
                                        "encoder": (job / "encoder.pt").relative_to(project).as_posix()})
    metrics = sorted((project / "results").rglob("metrics.json"))
    tables.write_tables(metrics, project / "results" / "tables", root=project)
    out = project / "results" / "figures"
    names = {p.name for p in figures.make_figures(project / "results" / "tables", out, {"toy": 16}, root=project)}
    assert {"tsne--toy.png", "gradcam--toy.png"} <= names, sorted(names)


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="the second figures process is forked on Linux only")
def test_two_threads_draw_the_network_figures_in_a_second_process(project: Path, monkeypatch):
    """threads=2 forks a child for Grad-CAM / t-SNE: the same PNGs as one thread, and a failure
    there stops the job with a one-line error instead of a missing figure."""
    import os

    serial = figures.make_figures(project / "results" / "tables", project / "one", {"toy": 16}, root=project)
    parent = os.getpid()
    drawn_in = []
    real = figures._network_figures

    def spy(res, out_dir):
        drawn_in.append(os.getpid())
        (out_dir / "pid").write_text(str(os.getpid()))
        return real(res, out_dir)

    monkeypatch.setattr(figures, "_network_figures", spy)
    forked = figures.make_figures(project / "results" / "tables", project / "two", {"toy": 16}, root=project,
                                  threads=2)
    assert sorted(p.name for p in forked) == sorted(p.name for p in serial)
    assert drawn_in == [] and int((project / "two" / "pid").read_text()) != parent  # drawn in the child

    def broken(res, out_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr(figures, "_network_figures", broken)
    with pytest.raises(figures.DefectbenchError, match=r"^figures: the Grad-CAM / t-SNE process failed \(exit code 1\)"):
        figures.make_figures(project / "results" / "tables", project / "three", {"toy": 16}, root=project, threads=2)


def test_figures_rule_declares_every_kind_of_file_the_figures_read(tmp_path: Path):
    """The demo's figures job (dry run): its inputs hold the tables, the data files at the image size
    and each kind of job file figures.py reads (the demo run checks none is read undeclared)."""
    from workflow_helpers import snakemake, working_copy

    project = working_copy(tmp_path)
    proc = snakemake(project, "results/figures", "-n", "--cores", "1", "--configfile", "config/config.yaml", timeout=300)
    block = proc.stdout[proc.stdout.index("rule figures:"):]
    inputs = block.split("input: ", 1)[1].split("\n", 1)[0].split(", ")
    names = {Path(p).name for p in inputs}
    assert set(figures.JOB_FILES.values()) <= names, sorted(names)
    data = "results/data/elpv"
    assert {f"{data}/manifest.parquet", f"{data}/splits/classification-seed0.parquet", f"{data}/cache-32.npy",
            f"{data}/masks-32.npy"} <= set(inputs)
    assert {f"results/tables/{name}.parquet" for name in figures.TABLES} <= set(inputs)
    assert "metrics.json" not in names  # thresholds come from the anomaly table


def test_anomaly_row_labels_name_each_value_once():
    cols = ("scorer", "features", "backbone")
    # PatchCore's features and backbone are the same name; its random-init control says 'random' first
    assert figures._label({"scorer": "patchcore", "features": "efficientnet_lite0", "backbone": "efficientnet_lite0"},
                          cols) == "patchcore / efficientnet_lite0"
    assert figures._label({"scorer": "patchcore", "features": "random", "backbone": "efficientnet_lite0"},
                          cols) == "patchcore / random / efficientnet_lite0"
    assert figures._label({"scorer": "knn", "features": "simclr", "backbone": float("nan")}, cols) == "knn / simclr"
