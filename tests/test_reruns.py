"""Exact partial re-runs (issue 12), proved with real local runs on a tiny config.

Every job's params are exactly what it reads plus a fingerprint of the library code it imports
(defectbench.params, defectbench.fingerprint), so Snakemake's params trigger reruns exactly the
jobs an edit reaches. For each edit below, applied cumulatively to one tiny project (ELPV from its
PyPI package, 32 px, 1 epoch): the dry run's job list equals the expected set, the real run runs
exactly those jobs, and only those jobs' outputs under results/ get new timestamps. The library is
a copy inside the project (on PYTHONPATH), so library edits are real edits of the code the jobs run.
README.md's table "what a change reruns" is checked against what these runs did.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from defectbench.runtime import load_torch
from workflow_helpers import ROOT, VENV_BIN, snakemake, working_copy, write_config

pytestmark = pytest.mark.slow

TINY = {
    "run_name": "rerun-test",
    "seeds": [0],
    "label_fractions": [1.0],
    "device": "cpu",
    "datasets": {
        "elpv": {"source": {"kind": "pip", "package": "elpv-dataset"}, "layout": "elpv", "image_size": 32,
                 "max_per_class": 8, "tasks": ["classification", "anomaly", "clustering"]},
    },
    "backbones": ["resnet18"],
    "diffusion": {"enabled": False},
    "contrastive": {"methods": ["simclr", "supcon"], "epochs": 1, "batch_size": 8, "projector": [32, 16]},
    "supervised": {"enabled": True, "epochs": 1, "batch_size": 8},
    "probe": {"epochs": 2, "augment": False},
    "anomaly": {"features": ["simclr"], "scorers": ["knn", "cosine"]},
    "patchcore": {"enabled": True, "backbone": "resnet18", "pretrain_dim": 32, "target_dim": 32, "projection_dim": 16},
    "ddad": {"enabled": False},
    "clustering": {"pretrain_dim": 32, "target_dim": 32},
    "report": {"figures": False},
}
# Jobs that turn metrics.json files into tables and the MLflow store: downstream of every experiment job.
REPORT = {("aggregate", ()), ("track", ()), ("all", ())}
CONFIG = "config/test.yaml"


def job(rule: str, **wildcards) -> tuple[str, tuple]:
    return rule, tuple(sorted((k, str(v)) for k, v in wildcards.items()))


def parse_jobs(log: str) -> dict[tuple[str, tuple], list[str]]:
    """(rule, wildcards) -> outputs of every job in a Snakemake log (dry run or real run)."""
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", "\n" + log):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        wildcards = tuple(sorted(tuple(kv.split("=", 1)) for kv in fields.get("wildcards", "").split(", ") if kv))
        jobs[(head.group(1), wildcards)] = [o for o in fields.get("output", "").split(", ") if o]
    return jobs


def snapshot(project: Path) -> dict[str, int]:
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in (project / "results").rglob("*") if p.is_file()}


class Project:
    """A working copy with its own library copy, a current config and helpers to edit and run it."""

    def __init__(self, root: Path, cfg: dict):
        self.root, self.cfg = root, copy.deepcopy(cfg)
        shutil.copytree(ROOT / "src" / "defectbench", root / "src" / "defectbench",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(ROOT / "README.md", root / "README.md")
        self.env = {"PYTHONPATH": str(root / "src")}
        self.results: dict[str, list[str]] = {}  # scenario -> rules its run ran (for the README check)

    def snakemake(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        write_config(self.root, self.cfg, Path(CONFIG).name)
        # targets before --configfile, which would take them as more config files
        return snakemake(self.root, *args, "--cores", "2", "--configfile", CONFIG, env=self.env, **kwargs)

    def edit_library(self, rel: str) -> None:
        """A real edit that changes no behaviour: a comment appended to src/defectbench/<rel>."""
        path = self.root / "src" / "defectbench" / rel
        path.write_text(path.read_text() + "\n# edited by test_reruns\n")

    def rerun(self) -> tuple[set, set, set]:
        """Dry run then real run: (jobs planned, jobs run, files under results/ rewritten)."""
        planned = parse_jobs(out(self.snakemake("-n")))
        before = snapshot(self.root)
        ran = parse_jobs(out(self.snakemake()))
        after = snapshot(self.root)
        rewritten = {p for p, mtime in after.items() if before.get(p) != mtime}
        outputs = {o for outs in planned.values() for o in outs}
        # only the planned jobs' outputs changed, and every planned job's metrics were rewritten
        # the track job also updates its MLflow store and the runs' artifacts (rules/report.smk)
        store = ("results/mlflow.db", "results/mlartifacts/") if ("track", ()) in planned else ()
        stray = {p for p in rewritten
                 if not p.startswith(store) and not any(p == o or p.startswith(o.rstrip("/") + "/") for o in outputs)}
        assert not stray, f"rewritten but not an output of a planned job: {sorted(stray)}"
        assert {o for o in outputs if o.endswith("metrics.json")} <= rewritten
        return set(planned), set(ran), rewritten


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    proj = Project(working_copy(tmp_path_factory.mktemp("reruns")), TINY)
    proj.snakemake(timeout=1200)
    return proj


def test_lint_reports_nothing(project):
    proc = project.snakemake("--lint", timeout=300, check=False)
    assert proc.returncode == 0 and "Lints for" not in out(proc), out(proc)[-3000:]


# Scenario name -> (edit, expected jobs); applied in this order to the same project. The README
# table rows carry the same names (first column), checked in test_readme_table_matches_the_runs.
def _set(*path_value):
    *path, value = path_value

    def edit(p: Project) -> None:
        node = p.cfg
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value(node.get(path[-1])) if callable(value) else value

    return edit


E = dict(dataset="elpv", backbone="resnet18", seed=0)
PRE = dict(task="classification", **E)
LITE = {**E, "backbone": "efficientnet_lite0"}  # the backbone of the package weights
RANDOM = {**E, "backbone": "random"}  # PatchCore's random-init control
# Ordered so that the grid grows late (each run stays small): 13 edits, about 45 jobs in all.
SCENARIOS = {
    "unchanged config": (lambda p: None, set()),
    "parameter of a method not in the grid": (_set("contrastive", "method_params", {"gca": {"epsilon": 0.3}}), set()),
    "edit a library file no stage imports (cli.py) or README.md": (
        lambda p: (p.edit_library("cli.py"), (p.root / "README.md").write_text("edited\n")), set()),
    "parameter of one method": (
        _set("contrastive", "method_params", {"gca": {"epsilon": 0.3}, "supcon": {"temperature": 0.2}}),
        {job("pretrain_contrastive", method="supcon", **PRE), job("linear_probe", method="supcon", **E), *REPORT}),
    # the controls list and the weights only the 'pretrained' control reads: the other probes stay
    "add the pretrained control": (
        lambda p: p.cfg["probe"].update(controls=["random", "pretrained"], pretrained="package",
                                        pretrained_backbones=["efficientnet_lite0"]),
        {job("linear_probe", method="pretrained", **LITE), *REPORT}),
    "patchcore.coreset_ratio": (_set("patchcore", "coreset_ratio", 0.2), {job("patchcore", **E), *REPORT}),
    # the controls lists only decide which jobs exist: the main patchcore and cluster jobs stay
    "add the random-init controls": (
        lambda p: (p.cfg["patchcore"].update(controls=["random"]), p.cfg["clustering"].update(controls=["random"])),
        {job("patchcore", **RANDOM), job("cluster", features="random", dataset="elpv", seed=0), *REPORT}),
    "add a scorer": (
        _set("anomaly", "scorers", lambda s: s + ["mahalanobis"]),
        {job("score_anomaly", features="simclr", dataset="elpv", seed=0), *REPORT}),
    # fingerprints are per file: anomaly/image_level.py holds the feature extraction too, and the
    # classification metrics of the probes and the supervised baseline take their AUROC/AP from
    # metrics/anomaly.py: all import it. Clustering embeds with anomaly/embedding.py, which does not.
    "edit metrics/anomaly.py": (
        lambda p: p.edit_library("metrics/anomaly.py"),
        {job("score_anomaly", features="simclr", dataset="elpv", seed=0),
         job("anomaly_features", features="simclr", **E), job("patchcore", **E), job("patchcore", **RANDOM),
         *(job("linear_probe", method=m, **E) for m in ("simclr", "supcon", "random")),
         job("linear_probe", method="pretrained", **LITE), job("train_supervised", pct=100, **E), *REPORT}),
    "edit ssl/losses.py": (
        lambda p: p.edit_library("ssl/losses.py"),
        {*(job("pretrain_contrastive", method=m, **PRE) for m in ("simclr", "supcon")),
         job("pretrain_contrastive", method="simclr", task="anomaly", **E),
         *(job("linear_probe", method=m, **E) for m in ("simclr", "supcon")),
         job("anomaly_features", features="simclr", **E),
         job("score_anomaly", features="simclr", dataset="elpv", seed=0), *REPORT}),
    # one probe job per encoder writes every fraction (its features extracted once): each reruns
    "add a label fraction": (
        _set("label_fractions", [0.5, 1.0]),
        {*(job("linear_probe", method=m, **E) for m in ("simclr", "supcon", "random")),
         job("linear_probe", method="pretrained", **LITE), job("train_supervised", pct=50, **E), *REPORT}),
    "add a contrastive method": (
        _set("contrastive", "methods", lambda m: m + ["dcl"]),
        {job("pretrain_contrastive", method="dcl", **PRE),
         job("linear_probe", method="dcl", **E), *REPORT}),
    "add a dataset": (
        _set("datasets", lambda d: {**d, "elpv_anomaly": {"source": {"kind": "pip", "package": "elpv-dataset"},
                                                          "layout": "elpv", "image_size": 32, "max_per_class": 6,
                                                          "tasks": ["anomaly"]}}),
        {job("fetch_dataset", dataset="elpv_anomaly"), job("build_manifest", dataset="elpv_anomaly"),
         job("make_split", dataset="elpv_anomaly", task="anomaly", seed=0),
         job("build_cache", dataset="elpv_anomaly", size=32),
         job("pretrain_contrastive", method="simclr", task="anomaly", **{**E, "dataset": "elpv_anomaly"}),
         job("anomaly_features", features="simclr", **{**E, "dataset": "elpv_anomaly"}),
         job("score_anomaly", features="simclr", dataset="elpv_anomaly", seed=0),
         job("patchcore", **{**E, "dataset": "elpv_anomaly"}), job("patchcore", **{**RANDOM, "dataset": "elpv_anomaly"}),
         *REPORT}),
}
# "add a seed" is checked on the job list only (planned = run): its real run is every job of the grid again.


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_an_edit_reruns_exactly_the_jobs_it_reaches(project, name):
    edit, expected = SCENARIOS[name]
    edit(project)
    planned, ran, rewritten = project.rerun()
    assert planned == expected, f"{name}: planned-expected {sorted(planned - expected)}, missing {sorted(expected - planned)}"
    assert ran == planned
    assert bool(rewritten) == bool(expected)
    project.results[name] = sorted({rule for rule, _ in ran})


def test_pinning_results_across_a_library_upgrade(project):
    """README: `--rerun-triggers mtime input` keeps existing outputs when only the code changed;
    fingerprints hash content, so undoing an edit makes the jobs current again."""
    path = project.root / "src" / "defectbench" / "train.py"
    original = path.read_text()
    project.edit_library("train.py")
    assert parse_jobs(out(project.snakemake("-n")))  # the trained jobs' code changed
    assert not parse_jobs(out(project.snakemake("-n", "--rerun-triggers", "mtime", "input")))
    path.write_text(original)
    assert "Nothing to be done" in out(project.snakemake("-n"))


def test_a_new_seed_plans_exactly_that_seeds_jobs(project):
    seeded = copy.deepcopy(project.cfg)
    seeded["seeds"] = [0, 1]
    write_config(project.root, seeded, "seeded.yaml")
    planned = parse_jobs(out(snakemake(project.root, "-n", "--configfile", "config/seeded.yaml", env=project.env)))
    assert {dict(w).get("seed") for _, w in planned if w} == {"1"}
    assert {rule for rule, _ in planned} == {
        "make_split", "pretrain_contrastive", "train_supervised", "linear_probe", "anomaly_features", "score_anomaly",
        "patchcore", "cluster", "aggregate", "track", "all"}
    # every experiment job of seed 0 has its seed-1 twin, nothing else
    seed0 = {(r, tuple((k, "1" if k == "seed" else v) for k, v in w))
             for r, w in parse_jobs(out(snakemake(project.root, "-n", "--forceall", "--configfile", "config/seeded.yaml",
                                                  env=project.env))) if dict(w).get("seed") == "0"}
    assert seed0 == {(r, w) for r, w in planned if w}
    project.results["add a seed"] = sorted({rule for rule, _ in planned})


def test_readme_table_matches_the_runs(project):
    """README's "what a change reruns": each row's rule list is what the run of that edit ran."""
    section = (ROOT / "README.md").read_text().split("### What a change reruns", 1)[1]
    table = [line for line in section.split("\n\n|", 1)[1].split("\n\n", 1)[0].splitlines()]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table[2:]]
    documented = {row[0]: set(re.findall(r"`(\w+)`", row[1])) for row in rows}
    assert set(documented) <= set(project.results), sorted(set(documented) - set(project.results))
    for name, rules in documented.items():
        ran = set(project.results[name]) - {"all"}
        assert rules == ran, f"README row {name!r}: documents {sorted(rules)}, the run ran {sorted(ran)}"


# ----------------------------------------------------------------------------- resume only the same job
# Three epochs: the kill at the first checkpoint leaves two to resume; the training is most of this
# test's time, so the data is small too (12 images per class, cut to 8 by the edit).
KILL_CFG = copy.deepcopy(TINY)
KILL_CFG["contrastive"].update(methods=["simclr"], epochs=3, checkpoint_every=1)
KILL_CFG["datasets"]["elpv"]["max_per_class"] = 12
ENCODER_DIR = "results/pretrain/simclr/elpv/classification/resnet18/seed0"
TARGET = f"{ENCODER_DIR}/metrics.json"


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        todo += [child for child, parent in parents.items() if parent == todo[0]]
        found.append(todo.pop(0))
    return found[1:]


def _run_until_checkpoint(proj: Project) -> None:
    """Run the target and kill its training job (SIGKILL: preempted) once a checkpoint exists;
    Snakemake itself sees the job die, as on a cluster."""
    write_config(proj.root, proj.cfg, Path(CONFIG).name)
    env = {**os.environ, **proj.env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(VENV_BIN / "snakemake"), TARGET, "--cores", "2", "--configfile", CONFIG]
    proc = subprocess.Popen(cmd, cwd=proj.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not list((proj.root / ENCODER_DIR).glob("checkpoint-*.pt")):
            time.sleep(0.05)
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (proj.root / TARGET).exists(), "the job finished before it could be killed; raise KILL_CFG epochs"
    assert list((proj.root / ENCODER_DIR).glob("checkpoint-*.pt"))


def _train_images(proj: Project) -> int:
    return json.loads((proj.root / TARGET).read_text())["metrics"]["train_images"]


def _encoder(proj: Project) -> dict:
    return load_torch(proj.root / ENCODER_DIR / "encoder.pt")["state_dict"]


def test_a_killed_job_resumes_only_when_it_is_the_same_job(tmp_path):
    proj = Project(working_copy(tmp_path), KILL_CFG)
    proj.snakemake(TARGET, timeout=900)
    straight = _encoder(proj)
    trained_first = _train_images(proj)

    # unchanged config: the rerun resumes from the checkpoint and ends bit-identical
    (proj.root / TARGET).unlink()
    _run_until_checkpoint(proj)
    # an interrupted save leaves a partial temp file: swept by the next run of the job
    partial = proj.root / ENCODER_DIR / ".checkpoint-0123456789ab.pt.x1y2z3.pt"
    partial.write_bytes(b"partial")
    log = out(proj.snakemake(TARGET, timeout=900))
    assert "resumed from" in (proj.root / "logs/pretrain_contrastive/simclr/elpv/classification/resnet18/seed0.log").read_text()
    assert not partial.exists() and not list((proj.root / ENCODER_DIR).glob("checkpoint-*.pt")), log[-2000:]
    resumed = _encoder(proj)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    # kill again, then edit the data config: the rerun trains from scratch on the new data
    (proj.root / TARGET).unlink()
    _run_until_checkpoint(proj)
    proj.cfg["datasets"]["elpv"]["max_per_class"] = 8
    proj.snakemake(TARGET, timeout=900)
    job_log = (proj.root / "logs/pretrain_contrastive/simclr/elpv/classification/resnet18/seed0.log").read_text()
    assert "resumed from" not in job_log.split("pretrain simclr")[-1]
    assert list(pd.read_parquet(proj.root / ENCODER_DIR / "history.parquet")["epoch"]) == [1, 2, 3]
    split = pd.read_parquet(proj.root / "results/data/elpv/splits/classification-seed0.parquet")
    assert _train_images(proj) == int((split["subset"] == "train").sum()) < trained_first  # the 8-per-class data only
