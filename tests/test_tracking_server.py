"""The workflow against a real MLflow tracking server on PostgreSQL (scripts/local-mlflow.sh).

The fixture starts PostgreSQL (its own cluster in a temporary directory) and `mlflow server
--serve-artifacts` on free loopback ports through the project's script, and stops them after.
A tiny ELPV config (pip-packaged real images, 32 px; three jobs with results: contrastive
pretraining, supervised baseline, linear probe) logs to it, locally and through the Slurm
profile (local Slurm, see tests/test_slurm.py; run this module under
`flock /tmp/defectbench-slurm.lock`, the machine's one Slurm is shared). Checked through the
MLflow client: one current run per job, per-epoch history logged during training, FAILED for
a job made to fail and its rerun superseding it, no duplicate after a forced rerun, and a server
killed mid-training makes the training job fail with a one-line message; after a restart the
rerun completes and the track rule's marker lists every job.

Without root and without PostgreSQL the tests skip (one line), except under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_slurm import TINY_CONFIG, ci_profile, slurm  # noqa: F401 - `slurm` is a fixture used below
from workflow_helpers import ROOT, VENV_BIN, snakemake, working_copy, write_config

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "local-mlflow.sh"
EXPERIMENT = "server-test"
PRETRAIN = "pretrain/simclr/elpv/classification/resnet18/seed0"
SUPERVISED = "supervised/elpv/resnet18/seed0/labels100"
PROBE = "probe/simclr/elpv/resnet18/seed0/labels100"
JOBS = {PRETRAIN, SUPERVISED, PROBE}
# Jobs fail fast when the server is gone (MLflow retries for minutes by default).
FAST_FAILING_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_installed() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture(scope="module")
def server():
    """A running PostgreSQL + MLflow server of scripts/local-mlflow.sh; yields (tracking URI, env)."""
    if not _postgres_installed() and os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but PostgreSQL is missing and we are not root: run scripts/local-mlflow.sh install")
        pytest.skip("PostgreSQL not installed and not root (scripts/local-mlflow.sh install needs apt as root)")
    local_dir = Path(tempfile.mkdtemp(prefix="defectbench-mlflow-test-"))
    env = dict(os.environ, MLFLOW_LOCAL_DIR=str(local_dir), MLFLOW_PG_PORT=str(_free_port()),
               MLFLOW_PORT=str(_free_port()), MLFLOW_BIN=str(VENV_BIN / "mlflow"),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(SCRIPT), "install"], check=True, timeout=900, env=env)
    t0 = time.monotonic()
    out = subprocess.run([str(SCRIPT), "start"], check=True, timeout=300, env=env, capture_output=True, text=True)
    print(f"local-mlflow start: {time.monotonic() - t0:.1f} s")
    uri = out.stdout.strip().rsplit("MLFLOW_TRACKING_URI=", 1)[1]
    assert subprocess.run([str(SCRIPT), "status"], timeout=60, env=env).returncode == 0
    saved = {k: os.environ.get(k) for k in FAST_FAILING_CLIENT}
    os.environ.update(FAST_FAILING_CLIENT)  # jobs inherit it, Slurm jobs too (sbatch exports the environment)
    try:
        yield uri, env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run([str(SCRIPT), "stop"], timeout=120, env=env, check=False)
        assert subprocess.run([str(SCRIPT), "status"], timeout=60, env=env).returncode != 0
        shutil.rmtree(local_dir, ignore_errors=True)


def _runs(uri: str) -> dict[str, list]:
    """Job key -> its child runs (not deleted), oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], "tags.`defectbench.role` = 'child'", max_results=1000,
                                  order_by=["attributes.start_time ASC"]):
        out.setdefault(run.data.tags["defectbench.job_key"], []).append(run)
    return out


def _current(runs: list) -> list:
    return [r for r in runs if r.data.tags.get("defectbench.current") != "false"]


def _one_current_finished_run_per_job(uri: str) -> dict[str, object]:
    runs = _runs(uri)
    assert set(runs) == JOBS, sorted(runs)
    current = {key: _current(rs) for key, rs in runs.items()}
    assert {key: len(rs) for key, rs in current.items()} == {key: 1 for key in JOBS}, current
    assert {key: rs[0].info.status for key, rs in current.items()} == {key: "FINISHED" for key in JOBS}
    return {key: rs[0] for key, rs in current.items()}


def test_jobs_log_live_runs_to_a_postgresql_backed_server(server, slurm, tmp_path, capsys):  # noqa: F811
    from mlflow import MlflowClient

    from defectbench import cli

    uri, env = server
    client = MlflowClient(tracking_uri=uri)
    project = working_copy(tmp_path)
    config = {**TINY_CONFIG, "run_name": EXPERIMENT, "tracking": {"uri": uri}}
    args = ["--cores", "2", "--configfile", "config/test.yaml"]
    t_start = time.monotonic()
    timings: dict[str, float] = {}  # printed at the end (capsys holds what is printed before)

    # 1. plain snakemake; the supervised baseline is made to fail (its weights file is missing)
    write_config(project, {**config, "supervised": {**config["supervised"], "pretrained": "no-such-weights.pt"}})
    proc = snakemake(project, *args, "--keep-going", timeout=600, check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    runs = _runs(uri)
    assert set(runs) == JOBS
    assert [r.info.status for r in runs[SUPERVISED]] == ["FAILED"]
    pretrain = runs[PRETRAIN][0]
    assert pretrain.info.status == "FINISHED" and runs[PROBE][0].info.status == "FINISHED"
    tags = pretrain.data.tags
    assert {tags["defectbench.key.dataset"], tags["defectbench.key.method"], tags["defectbench.key.backbone"],
            tags["defectbench.key.seed"]} == {"elpv", "simclr", "resnet18", "0"}
    assert len(tags["defectbench.config_hash"]) == 12 and tags["defectbench.code_version"]
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["defectbench.role"] == "parent"
    # per-epoch history, logged while training: one point per epoch, stamped as each epoch ended
    history = sorted(client.get_metric_history(pretrain.info.run_id, "history.loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2]
    assert pretrain.info.start_time <= history[0].timestamp < history[1].timestamp <= pretrain.info.end_time
    # artifacts went through the server (--serve-artifacts) into its artifact store
    assert pretrain.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"metrics.json", "history.parquet"} <= {a.path for a in client.list_artifacts(pretrain.info.run_id)}
    timings["plain run, one job failing"] = time.monotonic() - t_start

    # 2. fixed config, through the Slurm profile: the rerun supersedes the FAILED run
    write_config(project, config)
    t0 = time.monotonic()
    snakemake(project, "--profile", ci_profile(project), "--configfile", "config/test.yaml", timeout=900)
    timings["rerun through Slurm"] = time.monotonic() - t0
    current = _one_current_finished_run_per_job(uri)
    supervised = _runs(uri)[SUPERVISED]
    assert [r.info.status for r in supervised] == ["FAILED", "FINISHED"]
    assert supervised[0].data.tags["defectbench.superseded_by"] == supervised[1].info.run_id
    assert supervised[1].data.tags["defectbench.device"] == "cpu"
    marker = json.loads((project / "results" / "mlflow.synced.json").read_text())
    assert marker["tracking_uri"] == uri and marker["jobs"] == len(JOBS)
    assert marker["skipped"] == len(JOBS)  # every job had logged its own run; the track rule only checked

    # 3. a forced rerun of the probe replaces its run: still one run for the job
    snakemake(project, *args, "--forcerun", "linear_probe", timeout=600)
    after = _one_current_finished_run_per_job(uri)
    assert len(_runs(uri)[PROBE]) == 1 and after[PROBE].info.run_id != current[PROBE].info.run_id

    # compare reads the server as it reads a SQLite store
    assert cli.main(["compare", "--source", "mlflow", "--uri", uri, "--experiment", EXPERIMENT,
                     "--stage", "classification", "--metric", "accuracy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("simclr" in line and "(n=1)" in line for line in lines), lines

    # 4. the server is killed while the pretraining trains: the job fails with a clear message
    epochs = 8
    write_config(project, {**config, "contrastive": {**config["contrastive"], "epochs": epochs}})
    log_path = tmp_path / "killed.log"
    run_env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg")
    with log_path.open("w") as log:
        proc = subprocess.Popen(["timeout", "-k", "30", "600", str(VENV_BIN / "snakemake"), *args],
                                cwd=project, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        killed = False
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            live = [r for r in _current(_runs(uri)[PRETRAIN]) if r.info.status == "RUNNING"]
            if live and client.get_metric_history(live[0].info.run_id, "history.loss"):
                pid = int((Path(env["MLFLOW_LOCAL_DIR"]) / "mlflow.pid").read_text())
                os.killpg(pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.5)
        assert killed, log_path.read_text()[-3000:]
        rc = proc.wait(timeout=600)
    out = log_path.read_text()
    assert rc != 0, out[-3000:]
    assert f"MLflow tracking server {uri} failed while logging {PRETRAIN}: server unreachable" in out, out[-3000:]
    assert not (project / "results" / PRETRAIN / "metrics.json").exists()

    # 5. restart; the rerun completes and syncs
    t0 = time.monotonic()
    subprocess.run([str(SCRIPT), "start"], check=True, timeout=300, env=env, capture_output=True)
    timings["server restart"] = time.monotonic() - t0
    snakemake(project, *args, timeout=600)
    final = _one_current_finished_run_per_job(uri)
    pretrain_runs = _runs(uri)[PRETRAIN]
    killed_run = pretrain_runs[-2]
    assert killed_run.info.status == "FAILED"
    assert killed_run.data.tags["defectbench.superseded_by"] == final[PRETRAIN].info.run_id
    steps = {m.step for m in client.get_metric_history(final[PRETRAIN].info.run_id, "history.loss")}
    assert steps == set(range(1, epochs + 1))
    marker = json.loads((project / "results" / "mlflow.synced.json").read_text())
    assert marker["jobs"] == len(JOBS) and sorted(s.split("@")[0] for s in marker["synced"]) == sorted(JOBS)
    timings["whole test"] = time.monotonic() - t_start
    print({k: round(v, 1) for k, v in timings.items()}, {k: len(v) for k, v in _runs(uri).items()})
