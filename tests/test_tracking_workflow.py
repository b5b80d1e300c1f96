"""The embedded MLflow store through real Snakemake runs: nothing lost.

A tiny ELPV config (the pip-packaged real dataset, 32 px, 1-2 epochs; three jobs with results:
contrastive pretraining, supervised baseline, probe) runs to completion; then the store is
deleted, emptied, superseded and force-synced, and every time the next `snakemake` leaves a
store holding every current run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_slurm import TINY_CONFIG
from workflow_helpers import snakemake, working_copy, write_config

pytestmark = pytest.mark.slow

CONFIG = {**TINY_CONFIG, "run_name": "store-check"}
STORE = "sqlite:///results/mlflow.db"
JOBS = {
    "pretrain/simclr/elpv/classification/resnet18/seed0",
    "supervised/elpv/resnet18/seed0/labels100",
    "probe/simclr/elpv/resnet18/seed0/labels100",
}


# MLflow caches one store (and its open SQLite connection) per URI in a process, which breaks
# when the file is deleted under it: every look at the store is a fresh process.
_RUNS = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
if len(sys.argv) > 3:
    client.delete_run(sys.argv[3])
exp = client.get_experiment_by_name(sys.argv[2])
runs = client.search_runs([exp.experiment_id], "tags.`defectbench.role` = 'child'", max_results=1000)
print(json.dumps([{"id": r.info.run_id, "job": r.data.tags["defectbench.job_key"], "status": r.info.status,
                   "current": r.data.tags.get("defectbench.current")} for r in runs]))
"""


def store_runs(uri: str, delete: str | None = None) -> list[dict]:
    """The child runs in the store (after deleting run ``delete``)."""
    args = [sys.executable, "-c", _RUNS, uri, "store-check"] + ([delete] if delete else [])
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout)


def current_jobs(uri: str) -> list[str]:
    return sorted(r["job"] for r in store_runs(uri) if r["current"] != "false" and r["status"] == "FINISHED")


def _rules_run(proc) -> set[str]:
    """Rules Snakemake executed (its "rule <name>:" job headers)."""
    return {line.split()[1].rstrip(":") for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":")}


def test_deleted_emptied_or_force_synced_store_keeps_every_run(tmp_path):
    project = working_copy(tmp_path)
    write_config(project, CONFIG)
    args = ["--cores", "2", "--configfile", "config/test.yaml"]
    snakemake(project, *args, timeout=600)
    db = project / "results" / "mlflow.db"
    uri = f"sqlite:///{db}"
    marker = project / "results" / "mlflow.synced.json"
    assert db.is_file() and json.loads(marker.read_text())["jobs"] == len(JOBS)

    assert current_jobs(uri) == sorted(JOBS)

    # 1. deleted: the next run syncs again (and only that), into a new store with every run
    db.unlink()
    proc = snakemake(project, *args, timeout=300)
    assert _rules_run(proc) == {"track", "all"}, proc.stdout[-2000:]
    assert current_jobs(uri) == sorted(JOBS)

    # 2. emptied: a run deleted from the store behind the marker's back is synced again
    store_runs(uri, delete=store_runs(uri)[0]["id"])
    proc = snakemake(project, *args, timeout=300)
    assert _rules_run(proc) == {"track", "all"}, proc.stdout[-2000:]
    assert current_jobs(uri) == sorted(JOBS)

    # 3. a changed probe config: the probe's earlier run stays, not current; --forcerun track
    # (which never deletes the store) keeps it
    write_config(project, {**CONFIG, "probe": {**CONFIG["probe"], "val_fraction": 0.3}})  # a key the logistic probe reads
    snakemake(project, *args, timeout=300)
    snakemake(project, *args, "--forcerun", "track", timeout=300)
    assert current_jobs(uri) == sorted(JOBS)
    every = store_runs(uri)
    assert len(every) == len(JOBS) + 1
    assert [r["job"] for r in every if r["current"] == "false"] == ["probe/simclr/elpv/resnet18/seed0/labels100"]

    # 4. and then there is nothing to do
    proc = snakemake(project, *args, timeout=300)
    assert "Nothing to be done" in proc.stdout + proc.stderr
