"""MLflow sync: one nested run per job, params/metrics/history/artifacts, idempotent re-sync."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from defectbench import tracking
from defectbench.runtime import write_metrics, write_parquet


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """One SQLite store migrated once (MLflow's migrations cost seconds); tests copy it."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def store(migrated_db, tmp_path) -> str:
    db = tmp_path / "results" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copy(migrated_db, db)
    return f"sqlite:///{db}"


def _job(root: Path, rel: str, seed: int, acc: float, epochs: int = 1, history: bool = False) -> Path:
    path = root / "results" / rel / "metrics.json"
    write_metrics(
        path, stage="classification", metrics={"accuracy": acc, "macro_auroc": None},
        config={"probe": {"epochs": epochs, "lr": 0.001}, "protocol": "clean"},
        keys={"dataset": "neu", "method": "simclr", "backbone": "resnet18", "seed": seed, "labels_pct": 10},
        device="cpu", wall_time_s=1.0,
    )
    if history:
        write_parquet(path.parent / "history.parquet", pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5]}))
    return path


def _children(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=1000)]
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_sync_logs_nested_runs_with_everything(store, tmp_path):
    paths = [_job(tmp_path, "probe/simclr/neu/resnet18/seed0/labels10", 0, 0.9, history=True),
             _job(tmp_path, "probe/simclr/neu/resnet18/seed1/labels10", 1, 0.8)]
    summary = tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    assert (summary["created"], summary["skipped"], summary["jobs"]) == (2, 0, 2)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    children = _children(store)
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {summary["parent_run_id"]}
    run = next(r for r in children if r.data.tags["defectbench.job_key"].endswith("seed0/labels10"))
    assert run.data.tags["defectbench.job_key"] == "probe/simclr/neu/resnet18/seed0/labels10"
    assert run.data.params["config.probe.epochs"] == "1"
    assert run.data.params["key.dataset"] == "neu"
    assert run.data.metrics["accuracy"] == pytest.approx(0.9)
    assert "macro_auroc" not in run.data.metrics  # None is not logged
    history = client.get_metric_history(run.info.run_id, "history.loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.parquet"} <= artifacts


def test_resync_is_idempotent_and_updates(store, tmp_path):
    paths = [_job(tmp_path, f"probe/simclr/neu/resnet18/seed{s}/labels10", s, 0.5 + s / 10) for s in range(3)]
    first = tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    second = tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    assert first["created"] == 3 and second["skipped"] == 3 and second["created"] == 0
    assert first["parent_run_id"] == second["parent_run_id"]
    assert len(_children(store)) == 3
    # the same job re-ran with the same config (new numbers): its run is replaced, not duplicated
    _job(tmp_path, "probe/simclr/neu/resnet18/seed0/labels10", 0, 0.99)
    third = tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    assert (third["replaced"], third["skipped"]) == (1, 2)
    children = _children(store)
    assert len(children) == 3
    seed0 = [r for r in children if r.data.tags["defectbench.job_key"].endswith("seed0/labels10")]
    assert [r.data.metrics["accuracy"] for r in seed0] == [pytest.approx(0.99)]
    # a changed config for a job: a new run; the old one is kept but no longer current
    _job(tmp_path, "probe/simclr/neu/resnet18/seed1/labels10", 1, 0.7, epochs=5)
    fourth = tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    assert fourth["created"] == 1
    frame = tracking.runs_frame(store, "exp")
    assert len(frame) == 3 and len(tracking.runs_frame(store, "exp", current_only=False)) == 4
    assert frame.loc[frame["seed"] == 1, "accuracy"].tolist() == [pytest.approx(0.7)]


def test_job_key_and_params():
    assert tracking.job_key("results/anomaly/knn/simclr/neu/seed0/metrics.json") == "anomaly/knn/simclr/neu/seed0"
    flat = tracking.flatten_params({"a": {"b": {"c": 1}}, "s": "x", "l": [1, 2], "empty": {}})
    assert flat == {"a.b.c": "1", "s": "x", "l": "[1, 2]", "empty": "{}"}
    assert tracking.default_artifact_location("sqlite:///results/mlflow.db").endswith("/results/mlartifacts")
    assert tracking.default_artifact_location("http://server:5000") is None


def test_cli_compare_from_mlflow(store, tmp_path, capsys):
    from defectbench import cli

    paths = [_job(tmp_path, f"probe/simclr/neu/resnet18/seed{s}/labels10", s, acc) for s, acc in ((0, 0.9), (1, 0.7))]
    tracking.sync_runs(paths, tracking_uri=store, experiment="exp", root=tmp_path)
    assert cli.main(["compare", "--source", "mlflow", "--uri", store, "--experiment", "exp",
                     "--stage", "classification", "--metric", "accuracy"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "simclr" in l)
    assert "0.8000 ± 0.1414 (n=2)" in line
    assert cli.main(["compare", "--source", "mlflow", "--uri", store, "--experiment", "nope"]) == 2
    assert "not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- live runs (server mode)
# live_runs speaks MLflow's client API only, so its semantics are tested here on a SQLite store;
# tests/test_tracking_server.py runs the workflow against a real server on PostgreSQL.
def _train_three_epochs(tmp_path: Path) -> pd.DataFrame:
    """A real train_loop (3 epochs of a linear model): its per-epoch rows reach the live runs."""
    import torch

    from defectbench.train import train_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.ones(8, 2)
    return train_loop(model, optimizer, lambda batch, gen: (model(batch).pow(2).mean(), {}),
                      lambda epoch, gen: data.split(4), epochs=3, seed=0, device=torch.device("cpu"), amp="none",
                      checkpoint_path=tmp_path / "ckpt.pt", checkpoint_every=1)


def _live(store: str, tmp_path: Path, rel: str):
    return tracking.live_runs([tmp_path / "results" / rel / "metrics.json"], tracking_uri=store, experiment="exp",
                              parent_run_name="exp", tags={"defectbench.key.dataset": "neu"}, root=tmp_path)


def test_live_run_logs_each_epoch_while_training_then_the_record(store, tmp_path):
    from mlflow import MlflowClient

    from defectbench import train

    rel = "probe/simclr/neu/resnet18/seed0/labels10"
    with _live(store, tmp_path, rel) as runs:
        client = MlflowClient(tracking_uri=store)
        (run_id,) = runs.values()
        assert client.get_run(run_id).info.status == "RUNNING"
        history = _train_three_epochs(tmp_path)
        # logged during training, before any file of the job exists
        assert [m.step for m in client.get_metric_history(run_id, "history.loss")] == [1, 2, 3]
        assert not (tmp_path / "results" / rel / "metrics.json").exists()
        write_parquet(tmp_path / "results" / rel / "history.parquet", history)
        _job(tmp_path, rel, 0, 0.9)
    assert train.EPOCH_END_CALLBACKS == []
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == pytest.approx(0.9)
    assert run.data.tags["defectbench.key.seed"] == "0" and run.data.tags["defectbench.role"] == "child"
    assert run.data.tags["mlflow.parentRunId"] == tracking.sync_runs([], tracking_uri=store, experiment="exp")["parent_run_id"]
    losses = sorted(client.get_metric_history(run_id, "history.loss"), key=lambda m: m.step)
    # one value per epoch (the final record did not log the history twice), equal to the history file
    assert [m.value for m in losses] == pytest.approx(history["loss"].tolist())
    assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.json", "history.parquet"}
    # the track rule finds the live run complete and adds nothing
    summary = tracking.sync_runs([tmp_path / "results" / rel / "metrics.json"], tracking_uri=store,
                                 experiment="exp", root=tmp_path)
    assert (summary["skipped"], summary["created"]) == (1, 0)


def test_failed_job_marks_its_run_failed_and_reruns_supersede_it(store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    rel = "probe/simclr/neu/resnet18/seed0/labels10"
    with pytest.raises(ValueError, match="boom"):
        with _live(store, tmp_path, rel) as runs:
            raise ValueError("boom")
    (failed,) = runs.values()
    assert client.get_run(failed).info.status == "FAILED"
    # a killed job leaves its run RUNNING: the next run of the job closes it as FAILED
    with pytest.raises(RuntimeError):
        with _live(store, tmp_path, rel) as runs:
            raise RuntimeError("killed")
    (second,) = runs.values()
    client.update_run(second, status="RUNNING")  # as a SIGKILL'ed job leaves it
    with _live(store, tmp_path, rel) as runs:
        _job(tmp_path, rel, 0, 0.9)
    (good,) = runs.values()
    with _live(store, tmp_path, rel) as runs:  # forced rerun, same config: replaces the finished run
        _job(tmp_path, rel, 0, 0.95)
    (best,) = runs.values()
    children = _children(store)
    by_id = {r.info.run_id: r for r in children}
    assert good not in by_id  # replaced (deleted), not duplicated
    current = [r for r in children if r.data.tags.get("defectbench.current") != "false"]
    assert [r.info.run_id for r in current] == [best]
    assert by_id[best].data.metrics["accuracy"] == pytest.approx(0.95)
    for old in (failed, second):  # visibly superseded, never an unmarked duplicate
        assert by_id[old].info.status == "FAILED"
        assert by_id[old].data.tags["defectbench.current"] == "false"
        assert by_id[old].data.tags["defectbench.superseded_by"] in (second, good, best)
    assert tracking.runs_frame(store, "exp")["run_id"].tolist() == [best]


def test_unreachable_server_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(tracking.DefectbenchError) as err:
        with tracking.live_runs([tmp_path / "results/probe/a/metrics.json"], tracking_uri=f"http://127.0.0.1:{port}",
                                experiment="exp", parent_run_name="exp", tags={}):
            pass
    message = str(err.value)
    assert f"MLflow tracking server http://127.0.0.1:{port} failed while logging probe/a: server unreachable" in message
    assert "rerun snakemake" in message and "\n" not in message
    with pytest.raises(tracking.DefectbenchError, match="cannot read the MLflow store"):
        tracking.missing_runs(f"http://127.0.0.1:{port}", "exp", ["probe/a@0123"])


# ----------------------------------------------------------------------------- the store check
def test_marker_is_current_until_the_store_is_deleted_or_emptied(store, tmp_path):
    import os

    from mlflow import MlflowClient

    paths = [_job(tmp_path, f"probe/simclr/neu/resnet18/seed{s}/labels10", s, 0.5) for s in range(2)]
    marker = tmp_path / "results" / "mlflow.synced.json"
    summary = tracking.track_workflow(paths, {"tracking": {"uri": store}, "run_name": "exp"}, marker)
    assert len(summary["synced"]) == 2 and summary["jobs"] == 2
    assert tracking.marker_is_current(marker, store) == (True, "")
    assert tracking.marker_is_current(marker, "http://127.0.0.1:1")[0] is False  # another store
    # emptied: a run deleted behind the marker's back (the file is newer than the marker)
    client = MlflowClient(tracking_uri=store)
    client.delete_run(_children(store)[0].info.run_id)
    os.utime(marker, (1, 1))
    current, why = tracking.marker_is_current(marker, store)
    assert not current and "1 of the 2 synced runs are missing" in why
    # deleted
    db = tracking.sqlite_path(store)
    db.unlink()
    assert tracking.marker_is_current(marker, store) == (False, f"the store {db} is missing")
    assert tracking.missing_runs(store, "exp", summary["synced"]) == sorted(summary["synced"])
    assert not db.exists()  # checking never creates a store
    with pytest.raises(tracking.DefectbenchError, match="2 of 2 job runs are missing"):
        tracking.verify_store(store, "exp", summary["synced"])


def test_track_never_reports_a_sync_into_a_store_deleted_meanwhile(store, tmp_path, monkeypatch):
    paths = [_job(tmp_path, "probe/simclr/neu/resnet18/seed0/labels10", 0, 0.5)]
    marker = tmp_path / "results" / "mlflow.synced.json"
    sync = tracking.sync_runs

    def sync_then_lose_the_store(*args, **kwargs):
        summary = sync(*args, **kwargs)
        tracking.sqlite_path(store).unlink()  # e.g. `rm results/mlflow.db` while the track job runs
        return summary

    monkeypatch.setattr(tracking, "sync_runs", sync_then_lose_the_store)
    with pytest.raises(tracking.DefectbenchError, match="1 of 1 job runs are missing"):
        tracking.track_workflow(paths, {"tracking": {"uri": store}, "run_name": "exp"}, marker)
    assert not marker.exists()


@pytest.mark.parametrize("uri, ok", [("sqlite:///results/mlflow.db", True), ("https://mlflow.example.org", True),
                                      ("http://127.0.0.1:5000", True), ("postgresql://u@db/mlflow", False),
                                      ("./mlruns", False)])
def test_tracking_uri_is_a_sqlite_file_or_a_server(uri, ok):
    from defectbench.config import SCHEMA_PATH, validate_config

    cfg = {"datasets": {"neu": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}},
           "tracking": {"uri": uri}}
    if ok:
        assert validate_config(cfg, SCHEMA_PATH)["tracking"]["uri"] == uri
    else:
        with pytest.raises(tracking.DefectbenchError, match="config key tracking.uri:"):
            validate_config(cfg, SCHEMA_PATH)
