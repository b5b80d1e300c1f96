# Helpers of the report stage (rules/report.smk): output names, the stage-metrics input function
# and the registered final targets. Kept apart from the rules (snakemake --lint).
from pathlib import Path

from snakemake.logging import logger

from defectbench.runtime import DefectbenchError
from defectbench.tables import comparison_csvs
from defectbench.tracking import marker_is_current, sqlite_path

STAGE_TABLES = ["classification", "anomaly", "clustering", "pretraining"]


def published_dir():
    """config report.published, relative to the working directory (else to the workflow's)."""
    path = Path(config["report"]["published"])
    if not path.is_absolute() and not path.exists():
        path = Path(workflow.basedir) / path
    return path


def paper_datasets():
    """dataset name -> its declared paper_dataset (None: compared with no published number)."""
    return {name: entry.get("paper_dataset") for name, entry in DATASETS.items()}


def claims_file():
    """config report.claims (resolved like report.published), or None."""
    if not config["report"]["claims"]:
        return None
    path = Path(config["report"]["claims"])
    if not path.is_absolute() and not path.exists():
        path = Path(workflow.basedir) / path
    return str(path)


# Only published files with a row for a configured paper_dataset give a comparison table.
PUBLISHED_CSVS = [str(p) for p in comparison_csvs(published_dir().glob("*.csv"), paper_datasets())]
CLAIMS_FILE = claims_file()
CLAIMS_OUTPUTS = [f"results/tables/claims.{ext}" for ext in ("parquet", "md", "html")] if CLAIMS_FILE else []
PUBLISHED_NAMES = [Path(p).stem for p in PUBLISHED_CSVS]
TABLE_NAMES = STAGE_TABLES + [f"comparison_{n}" for n in PUBLISHED_NAMES]
FIGURES_DIR = "results/figures"
# The track rule's verification marker: what it synced, written only after reading the store back.
TRACK_SENTINEL = "results/mlflow.synced.json"
TRACKING_URI = config["tracking"]["uri"]
# The embedded SQLite store (an output of the track rule); None with a tracking server.
TRACKING_STORE = sqlite_path(TRACKING_URI)


def stage_metrics(wildcards=None):
    """Every other stage's metrics.json (never an output of this file)."""
    mine = set(report_targets())
    return sorted({t for t in all_targets() if t not in mine and str(t).endswith("metrics.json")})


def track_metrics(wildcards):
    """The track rule's metrics inputs. First, a marker that no longer describes the store (the
    store was deleted or emptied, or tracking.uri changed) is removed, so the sync runs again."""
    marker = Path(TRACK_SENTINEL)
    if marker.exists() and workflow.is_main_process:
        try:
            current, why = marker_is_current(marker, TRACKING_URI)
        except DefectbenchError as exc:  # server down: the track job checks again whenever it runs
            logger.warning(f"{marker}: store not checked: {exc}")
            current = True
        if not current:
            logger.warning(f"{marker}: {why}; the track rule syncs again")
            marker.unlink()
    return stage_metrics()


def _table_report(name):
    """The HTML rendering of a table, marked for the report with the caption of its kind."""
    stage = name if name in STAGE_TABLES else "comparison"
    return report(
        f"results/tables/{name}.html",
        caption=f"../report/table_{stage}.rst",
        category="Tables" if stage != "comparison" else "Published vs ours",
        labels={"table": name},
    )


@register_targets
def report_targets():
    """Final outputs of the report stage: tables, comparisons, figures, MLflow sentinel."""
    out = [f"results/tables/{n}.{ext}" for n in TABLE_NAMES for ext in ("parquet", "md", "html")] + CLAIMS_OUTPUTS
    if config["report"]["figures"]:
        out.append(FIGURES_DIR)
    out.append(TRACK_SENTINEL)
    return out
