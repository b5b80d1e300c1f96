"""MLflow tracking: an embedded SQLite store written by one rule, or a team's tracking server.

Two modes, chosen by ``tracking.uri`` (design rule 4):

* **embedded** (``sqlite:///results/mlflow.db``, the default): jobs never talk to MLflow (SQLite
  on shared file systems locks and races on schema migration, specs/ecosystem.md 4); they write
  ``metrics.json`` (+ ``history.parquet``), and the ``track`` rule (:func:`track_workflow`) is
  the only writer, copying them into the store afterwards (:func:`sync_runs`).
* **server** (``http(s)://...``, e.g. ``mlflow server`` on PostgreSQL): every job opens its own
  runs through :func:`tracked_job` (the frame of each job script) and logs live: per-epoch
  ``history.*`` metrics while it trains (through :data:`defectbench.train.EPOCH_END_CALLBACKS`),
  then params, final metrics and artifacts (uploaded to the server's artifact store). A job that
  fails leaves its runs FAILED. The ``track`` rule still runs: it syncs any job the server has
  no finished run for (e.g. jobs that ran before the URI was set) and verifies the store.

Both modes give the same store: one experiment (``tracking.experiment``, default the config's
``run_name``) holding one parent run (tag ``defectbench.role = parent``) and one nested child run
per metrics.json (per job; a job writing several results gets one run per result). A child run
carries params (the job keys and its flattened config slice), metrics (the final numbers and
``wall_time_s``), per-epoch history as stepped metrics ``history.<column>``, artifacts
(``metrics.json``, ``history.parquet`` and the PNGs in the job directory), and tags
``defectbench.job_key`` (the job directory below ``results/``), ``defectbench.key.<name>`` for
every job key (dataset, method, backbone, seed, ...), ``defectbench.config_hash``,
``defectbench.code_version`` (the package version that ran it), ``defectbench.code_fingerprint``
(the ``code`` entry of the job's params: :mod:`defectbench.params`), ``defectbench.sync_key`` (= job key @ config hash) and ``defectbench.record_sha``.

Reruns never leave an unmarked duplicate: a new run of a job tags every earlier run of that job
``defectbench.current = false`` + ``defectbench.superseded_by = <new run id>`` (an earlier run
still RUNNING, i.e. killed, becomes FAILED), and once it finishes, the earlier runs of the same
job *and* config are deleted (replaced). Runs of other configs of the job stay, not current
(MLflow params are immutable, so a changed config cannot update an old run). Re-syncing is
idempotent: a job whose finished run has the same metrics file (``record_sha``) is skipped.

The track rule's marker (``results/mlflow.synced.json``) lists the runs it verified in the store;
:func:`marker_is_current` lets the workflow drop a marker whose store was deleted or emptied, so
the next ``snakemake`` syncs again.

>>> flatten_params({"probe": {"epochs": 5, "lr": 0.001}, "seeds": [0, 1]})
{'probe.epochs': '5', 'probe.lr': '0.001', 'seeds': '[0, 1]'}
>>> is_server_uri("https://mlflow.example.org"), is_server_uri("sqlite:///results/mlflow.db")
(True, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse

from defectbench.runtime import DefectbenchError, config_hash, job_logging, write_json

log = logging.getLogger("defectbench")

TAG = "defectbench"
DEFAULT_URI = "sqlite:///results/mlflow.db"
SERVER_SCHEMES = ("http", "https")
# Run tag <- the entry of a job's params it comes from (defectbench.params: the code fingerprint).
CODE_TAGS = {"code_fingerprint": "code"}
_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}``; lists and scalars become JSON/str text (MLflow params are text)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            out[name] = text[:_MAX_PARAM_VALUE]
    return out


def is_server_uri(tracking_uri: str | None) -> bool:
    """True for a tracking server (``http(s)://``): jobs then log their own runs live."""
    return urlparse(tracking_uri or "").scheme in SERVER_SCHEMES


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    return Path(tracking_uri[len("sqlite:///"):])


def experiment_name(cfg: Mapping[str, Any]) -> str:
    """``tracking.experiment``, else the config's ``run_name``."""
    return (cfg.get("tracking") or {}).get("experiment") or cfg.get("run_name") or "defectbench"


def job_key(metrics_path: str | Path, root: str | Path | None = None) -> str:
    """The job's identity: its directory relative to ``results/`` (e.g. ``probe/simclr/neu/resnet18/seed0/labels10``)."""
    path = Path(metrics_path)
    if root is not None:
        try:
            path = path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    parts = list(path.parent.parts)
    if "results" in parts:
        parts = parts[len(parts) - parts[::-1].index("results"):]
    return "/".join(parts)


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go to ``mlartifacts/`` beside the database file."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another job created it at the same moment
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parent_run(client, experiment_id: str, run_name: str) -> str:
    """The experiment's parent run, created when missing.

    Jobs starting at the same moment may each create one; they all keep the oldest (start time,
    then id) and delete their own extra one, so the experiment ends with exactly one parent.
    """
    parent_filter = f"tags.`{TAG}.role` = 'parent'"
    found = _all_runs(client, experiment_id, parent_filter)
    mine = None
    if not found:
        mine = client.create_run(experiment_id, run_name=run_name, tags={f"{TAG}.role": "parent"}).info.run_id
        client.set_terminated(mine, "FINISHED")
        found = _all_runs(client, experiment_id, parent_filter)
    chosen = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
    if mine is not None and mine != chosen:
        client.delete_run(mine)
    return chosen


def _log_batches(client, run_id: str, params: dict[str, str], metrics: list, tags: dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _BATCH_PARAMS):
        client.log_batch(run_id, params=items[i:i + _BATCH_PARAMS])
    for i in range(0, len(metrics), _BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def history_metrics(history_path: Path, timestamp: int) -> list:
    """Stepped metrics ``history.<column>`` from a history.parquet (step = ``epoch`` column or row index)."""
    import pandas as pd

    if not history_path.exists():
        return []
    df = pd.read_parquet(history_path)
    steps = df["epoch"].astype(int).tolist() if "epoch" in df.columns else list(range(len(df)))
    return [m for step, row in zip(steps, df.to_dict("records")) for m in _epoch_metrics(row, step, timestamp)]


def _epoch_metrics(row: Mapping[str, Any], step: int, timestamp: int) -> list:
    """One history row (an epoch) -> ``history.<column>`` metrics; text and missing values are left out."""
    from mlflow.entities import Metric

    return [
        Metric(f"history.{name}", float(value), timestamp, int(step))
        for name, value in row.items()
        if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
        and not math.isnan(float(value))
    ]


def _child_payload(record: Mapping[str, Any], key: str) -> tuple[dict[str, str], list, dict[str, str]]:
    """(params, final metrics, tags) of one job's run."""
    from mlflow.entities import Metric

    from defectbench.tables import KEY_COLUMNS

    stage = record["stage"]
    keys = {k: record.get(k) for k in KEY_COLUMNS[stage] if record.get(k) is not None}
    params = {f"key.{k}": str(v) for k, v in keys.items()}
    params["protocol"] = str(record.get("protocol"))
    params.update(flatten_params(record.get("config") or {}, prefix="config."))
    timestamp = 0
    metrics = [
        Metric(name, float(value), timestamp, 0)
        for name, value in (record.get("metrics") or {}).items()
        if value is not None and not math.isnan(float(value))
    ]
    metrics.append(Metric("wall_time_s", float(record.get("wall_time_s") or 0.0), timestamp, 0))
    tags = {
        **job_tags(keys, record.get("config") or {}, (record.get("versions") or {}).get("defectbench")),
        f"{TAG}.role": "child",
        f"{TAG}.stage": stage,
        f"{TAG}.job_key": key,
        f"{TAG}.config_hash": str(record.get("config_hash")),
        f"{TAG}.sync_key": f"{key}@{record.get('config_hash')}",
        f"{TAG}.protocol": str(record.get("protocol")),
        f"{TAG}.device": str(record.get("device")),
        f"{TAG}.current": "true",
    }
    return params, metrics, tags


def job_tags(keys: Mapping[str, Any], cfg: Mapping[str, Any], code_version: str | None = None) -> dict[str, str]:
    """Tags naming a job before it has results: its keys (wildcards), config hash, the package
    version that ran it (default: this one) and the code fingerprint of its params."""
    from defectbench import __version__

    tags = {f"{TAG}.key.{k}": str(v) for k, v in keys.items()}
    tags[f"{TAG}.config_hash"] = config_hash(cfg)
    tags[f"{TAG}.code_version"] = str(code_version or __version__)
    tags.update({f"{TAG}.{tag}": str(cfg[key]) for tag, key in CODE_TAGS.items() if cfg.get(key) is not None})
    return tags


def _log_record(client, run_id: str, path: Path, key: str, timestamp: int, logged: set[tuple[str, int]] = frozenset()) -> str:
    """Log one metrics.json (params, metrics, history, tags, artifacts) on ``run_id``; return its sync key.

    ``logged``: (metric, step) pairs already logged live, left out of the history copy.
    """
    from defectbench.tables import read_metrics_record

    record = read_metrics_record(path)
    params, metrics, tags = _child_payload(record, key)
    tags[f"{TAG}.record_sha"] = hashlib.sha256(path.read_bytes()).hexdigest()
    metrics = [m.__class__(m.key, m.value, timestamp, m.step) for m in metrics]
    history = [m for m in history_metrics(path.parent / "history.parquet", timestamp) if (m.key, m.step) not in logged]
    _log_batches(client, run_id, params, metrics + history, tags)
    client.log_artifact(run_id, str(path))
    for extra in sorted(path.parent.glob("*.png")) + [path.parent / "history.parquet"]:
        if extra.exists():
            client.log_artifact(run_id, str(extra))
    return tags[f"{TAG}.sync_key"]


def _supersede(client, runs: Iterable, run_id: str, sync_key: str | None = None) -> int:
    """Mark ``runs`` (earlier runs of one job) as superseded by ``run_id``; return how many were replaced.

    With ``sync_key`` (``run_id`` has finished), earlier runs of the same job and config are
    deleted: the new run replaces them. Any other earlier run stays, tagged not current and
    ``superseded_by``; one still RUNNING (its job was killed) becomes FAILED.
    """
    replaced = 0
    for other in runs:
        if other.info.run_id == run_id or other.info.lifecycle_stage == "deleted":
            continue
        if sync_key is not None and other.data.tags.get(f"{TAG}.sync_key") == sync_key:
            client.delete_run(other.info.run_id)
            replaced += 1
            continue
        if other.info.status == "RUNNING":
            client.set_terminated(other.info.run_id, "FAILED")
        if other.data.tags.get(f"{TAG}.current") != "false":
            client.set_tag(other.info.run_id, f"{TAG}.current", "false")
            client.set_tag(other.info.run_id, f"{TAG}.superseded_by", run_id)
    return replaced


def _job_runs(client, experiment_id: str, key: str) -> list:
    return _all_runs(client, experiment_id, f"tags.`{TAG}.job_key` = '{key}'")


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------- embedded: the track rule
def sync_runs(
    metrics_paths: Iterable[str | Path],
    *,
    tracking_uri: str = DEFAULT_URI,
    experiment: str = "defectbench",
    parent_run_name: str | None = None,
    root: str | Path | None = None,
    artifact_location: str | None = None,
    parent_artifacts: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """Copy every job's results into MLflow; return counts and ids (written to the marker file).

    A job whose finished run already holds the same metrics file is skipped (with a tracking
    server, the job's own live run). ``parent_artifacts``: files logged on the parent run
    (tables, figures); already present ones are overwritten in place, so they never duplicate.
    """
    from defectbench.tables import read_metrics_record

    client = _client(tracking_uri)
    exp_id = _experiment_id(client, experiment, artifact_location or default_artifact_location(tracking_uri))
    parent_id = _parent_run(client, exp_id, parent_run_name or experiment)
    by_job: dict[str, list] = {}
    for r in _all_runs(client, exp_id, f"tags.`{TAG}.role` = 'child'"):
        by_job.setdefault(r.data.tags.get(f"{TAG}.job_key"), []).append(r)

    counts = {"created": 0, "replaced": 0, "skipped": 0}
    synced = []
    paths = sorted({Path(p) for p in metrics_paths})
    for i, path in enumerate(paths, 1):
        key = job_key(path, root)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        sync_key = f"{key}@{read_metrics_record(path).get('config_hash')}"
        synced.append(sync_key)
        earlier = by_job.get(key, [])
        if any(r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}.sync_key") == sync_key
               and r.data.tags.get(f"{TAG}.record_sha") == sha for r in earlier):
            counts["skipped"] += 1
            continue
        run = client.create_run(exp_id, run_name=key, tags={"mlflow.parentRunId": parent_id})
        _log_record(client, run.info.run_id, path, key, run.info.start_time)
        client.set_terminated(run.info.run_id, "FINISHED")
        replaced = _supersede(client, earlier, run.info.run_id, sync_key)
        counts["replaced" if replaced else "created"] += 1
        if i % 25 == 0:
            log.info("mlflow: %d/%d jobs synced", i, len(paths))
    for artifact in parent_artifacts:
        artifact = Path(artifact)
        if artifact.is_file():
            client.log_artifact(parent_id, str(artifact), artifact_path=artifact.parent.name)
    summary = {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "experiment_id": exp_id,
        "parent_run_id": parent_id,
        "jobs": len(paths),
        **counts,
        "synced": synced,
    }
    log.info("mlflow: %s", {k: v for k, v in summary.items() if k != "synced"})
    return summary


# ----------------------------------------------------------------------------- the store check
def missing_runs(tracking_uri: str, experiment: str, sync_keys: Iterable[str]) -> list[str]:
    """The sync keys without a finished, current run in the store (all of them when the store or
    the experiment is gone). Never creates a store."""
    from mlflow.exceptions import MlflowException

    wanted = set(sync_keys)
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return sorted(wanted)
    try:
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage == "deleted":
            return sorted(wanted)
        present = {
            r.data.tags.get(f"{TAG}.sync_key")
            for r in _all_runs(client, exp.experiment_id, f"tags.`{TAG}.role` = 'child'")
            if r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}.current") != "false"
        }
    except MlflowException as exc:
        raise DefectbenchError(f"{tracking_uri}: cannot read the MLflow store ({str(exc).splitlines()[0][:200]})") from None
    return sorted(wanted - present)


def marker_is_current(marker_path: str | Path, tracking_uri: str) -> tuple[bool, str]:
    """Whether the track rule's marker still describes the store; else (False, why).

    The marker is stale when ``tracking.uri`` changed, the SQLite file is gone, or a run it lists
    is missing from the store. A SQLite file untouched since the marker was written is current
    without opening it (the common case costs one ``stat``).
    """
    marker_path = Path(marker_path)
    try:
        marker = json.loads(marker_path.read_text())
        synced, experiment = marker["synced"], marker["experiment"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"{marker_path} is unreadable or from an older version"
    if marker.get("tracking_uri") != tracking_uri:
        return False, f"tracking.uri changed ({marker.get('tracking_uri')} -> {tracking_uri})"
    db = sqlite_path(tracking_uri)
    if db is not None:
        if not db.is_file():
            return False, f"the store {db} is missing"
        if db.stat().st_mtime <= marker_path.stat().st_mtime:
            return True, ""
    missing = missing_runs(tracking_uri, experiment, synced)
    if missing:
        return False, f"{len(missing)} of the {len(synced)} synced runs are missing from {tracking_uri} (e.g. {missing[0]})"
    return True, ""


def verify_store(tracking_uri: str, experiment: str, sync_keys: list[str]) -> None:
    """Raise unless every synced job has its run in the store (run count matches the jobs)."""
    missing = missing_runs(tracking_uri, experiment, sync_keys)
    if missing:
        raise DefectbenchError(
            f"{tracking_uri}: after the sync {len(missing)} of {len(sync_keys)} job runs are missing from experiment "
            f"{experiment!r} (e.g. {missing[0]}); was the store deleted during the sync? Rerun snakemake to sync again"
        )


# ----------------------------------------------------------------------------- server: live runs per job
def _tracking_failed(tracking_uri: str, keys: list[str], exc: Exception) -> DefectbenchError:
    text = str(exc).strip()
    if "Max retries exceeded" in text or "Connection refused" in text:
        detail = "server unreachable (connection refused or timed out after MLflow's retries)"
    else:
        detail = (text.splitlines() or [type(exc).__name__])[0]
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
    return DefectbenchError(
        f"MLflow tracking server {tracking_uri} failed while logging {', '.join(keys)}: {detail}. The job stopped; "
        "start the server again (scripts/local-mlflow.sh start for the local one) and rerun snakemake "
        "(the rerun supersedes this job's unfinished run)"
    )


@contextlib.contextmanager
def live_runs(
    metrics_paths: Iterable[str | Path],
    *,
    tracking_uri: str,
    experiment: str,
    parent_run_name: str,
    tags: Mapping[str, str],
    root: str | Path | None = None,
) -> Iterator[dict[Path, str]]:
    """Open one run per metrics file a job will write, nested under the experiment's parent run.

    While open, every epoch of :func:`defectbench.train.train_loop` is logged to them live. On
    success the finished metrics files are logged (params, metrics, history epochs not yet
    logged, artifacts) and the runs end FINISHED, replacing earlier runs of the same job and
    config; on an exception they end FAILED. An MLflow error (server down) becomes one
    :class:`DefectbenchError` naming the server and what to do.
    """
    from mlflow.exceptions import MlflowException

    from defectbench import train

    paths = [Path(p) for p in metrics_paths]
    keys = [job_key(p, root) for p in paths]
    try:
        client = _client(tracking_uri)
        exp_id = _experiment_id(client, experiment, None)
        parent_id = _parent_run(client, exp_id, parent_run_name)
        runs: dict[Path, str] = {}
        for path, key in zip(paths, keys):
            earlier = _job_runs(client, exp_id, key)
            run_tags = {"mlflow.parentRunId": parent_id, f"{TAG}.role": "child", f"{TAG}.job_key": key,
                        f"{TAG}.current": "true", **tags}
            runs[path] = client.create_run(exp_id, run_name=key, tags=run_tags).info.run_id
            _supersede(client, earlier, runs[path])
    except MlflowException as exc:
        raise _tracking_failed(tracking_uri, keys, exc) from None
    log.info("mlflow: live runs %s at %s", ", ".join(runs.values()), tracking_uri)

    logged: set[tuple[str, int]] = set()

    def log_epoch(row: Mapping[str, Any]) -> None:
        metrics = _epoch_metrics(row, int(row["epoch"]), _now_ms())
        for run_id in runs.values():
            client.log_batch(run_id, metrics=metrics)
        logged.update((m.key, m.step) for m in metrics)

    train.EPOCH_END_CALLBACKS.append(log_epoch)
    try:
        yield runs
        for path, key in zip(paths, keys):
            run_id = runs[path]
            sync_key = _log_record(client, run_id, path, key, _now_ms(), logged)
            client.set_terminated(run_id, "FINISHED")
            _supersede(client, _job_runs(client, exp_id, key), run_id, sync_key)
    except MlflowException as exc:
        # The server is the likely failure: marking the runs FAILED would only wait for it again.
        # The next run of this job marks them FAILED (see _supersede).
        raise _tracking_failed(tracking_uri, keys, exc) from None
    except BaseException:
        for run_id in runs.values():
            try:
                client.set_terminated(run_id, "FAILED")
            except MlflowException as exc:
                log.warning("mlflow: could not mark run %s FAILED (%s); the job's next run will", run_id, exc)
        raise
    finally:
        train.EPOCH_END_CALLBACKS.remove(log_epoch)


@contextlib.contextmanager
def tracked_job(smk: Any) -> Iterator[None]:
    """The frame of a job script: the job's log and, with a tracking server, its live runs.

    ``smk`` is the ``snakemake`` object of a script. Runs are opened for the job's outputs named
    ``metrics.json``; tags come from its wildcards and ``params.cfg``; the server, experiment
    and parent run name from the workflow config (not from params: changing the URI must not
    rerun any job).
    """
    with job_logging(smk.log[0]):
        uri = (smk.config.get("tracking") or {}).get("uri") or DEFAULT_URI
        metrics = [f for f in smk.output if Path(f).name == "metrics.json"]
        if not is_server_uri(uri) or not metrics:
            yield
            return
        from defectbench.tables import KEY_COLUMNS

        cfg = getattr(smk.params, "cfg", None) or {}
        key_names = {name for names in KEY_COLUMNS.values() for name in names}
        tags = job_tags({k: v for k, v in smk.wildcards.items() if k in key_names}, cfg)
        with live_runs(metrics, tracking_uri=uri, experiment=experiment_name(smk.config),
                       parent_run_name=smk.config.get("run_name") or experiment_name(smk.config), tags=tags, root="."):
            yield


# ----------------------------------------------------------------------------- reading back
def runs_frame(tracking_uri: str, experiment: str, current_only: bool = True) -> "pandas.DataFrame":  # noqa: F821
    """Finished child runs as a table shaped like results/tables (stage, key columns, protocol, metrics).

    Used by ``defectbench compare --source mlflow``, against a SQLite store or a server alike.
    """
    import pandas as pd

    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise DefectbenchError(f"MLflow experiment {experiment!r} not found at {tracking_uri} (experiments: {names}); run the track rule first")
    rows = []
    for r in _all_runs(client, exp.experiment_id, f"tags.`{TAG}.role` = 'child'"):
        tags = r.data.tags
        if r.info.status != "FINISHED" or (current_only and tags.get(f"{TAG}.current") == "false"):
            continue
        row: dict[str, Any] = {"stage": tags.get(f"{TAG}.stage"), "protocol": tags.get(f"{TAG}.protocol")}
        row.update({k[len(f"{TAG}.key."):]: v for k, v in tags.items() if k.startswith(f"{TAG}.key.")})
        row.update({k: v for k, v in r.data.metrics.items() if not k.startswith("history.")})
        row["run_id"] = r.info.run_id
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("seed", "labels_pct"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def track_workflow(
    metrics_paths: Iterable[str | Path],
    cfg: Mapping[str, Any],
    marker_path: str | Path,
    parent_artifacts: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """The ``track`` rule: sync every job, verify the store holds a run for each, write the marker.

    ``cfg``: ``tracking`` section (uri, experiment, artifact_location) and ``run_name``.
    ``parent_artifacts``: files, or directories whose ``*.md``/``*.png`` files are logged on the
    parent run (the Markdown tables and the figures). The marker is written only after the
    store was read back, so it never reports a sync into a store that is gone.
    """
    tcfg = cfg.get("tracking") or {}
    experiment = experiment_name(cfg)
    uri = tcfg.get("uri") or DEFAULT_URI
    summary = sync_runs(
        metrics_paths,
        tracking_uri=uri,
        experiment=experiment,
        parent_run_name=cfg.get("run_name") or experiment,
        root=".",
        artifact_location=tcfg.get("artifact_location"),
        parent_artifacts=[f for p in map(Path, parent_artifacts) for f in
                          (sorted([*p.glob("*.md"), *p.glob("*.png")]) if p.is_dir() else [p])],
    )
    verify_store(uri, experiment, summary["synced"])
    write_json(marker_path, summary)
    return summary
