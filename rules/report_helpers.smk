# Helpers of the report stage (rules/report.smk): output names, the stage-metrics and figure input
# functions and the registered final targets. Kept apart from the rules (snakemake --lint).
from pathlib import Path

from snakemake.logging import logger

from defectbench import figures as figures_lib
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
CLAIMS_OUTPUTS = [paths.table("claims", ext) for ext in ("parquet", "md", "html")] if CLAIMS_FILE else []
PUBLISHED_NAMES = [Path(p).stem for p in PUBLISHED_CSVS]
TABLE_NAMES = STAGE_TABLES + [f"comparison_{n}" for n in PUBLISHED_NAMES]
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
    marker = Path(paths.TRACK_MARKER)
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


def figure_datasets():
    """The datasets figures are drawn for: the classification and anomaly ones."""
    return list(dict.fromkeys(datasets_with("classification") + datasets_with("anomaly")))


def figure_image_sizes():
    """dataset -> its image_size: the cache the figures show (the one its probes, encoders and scorers read)."""
    return {name: image_size(name) for name in figure_datasets()}


def figure_inputs(wildcards):
    """Every file the figures job reads (defectbench.figures), so that a change to any reruns it:
    the tables; each dataset's manifest and classification splits, image cache and masks at its
    image_size; beside each job's metrics.json the files its figures draw from (figures.JOB_FILES).
    Calls the other stages' target functions: at DAG time, when every rule file is loaded."""
    files = figures_lib.JOB_FILES

    def beside(targets, file):
        return [str(Path(t).with_name(file)) for t in targets]

    classification, anomaly = datasets_with("classification"), datasets_with("anomaly")
    probes, supervised, mapped = probe_targets(), supervised_targets(), patchcore_targets() + ddad_targets()
    return {
        "tables": [paths.table(name) for name in figures_lib.TABLES],
        "manifests": [paths.manifest(ds) for ds in classification],
        "splits": [paths.split(ds, "classification", seed) for ds in classification for seed in SEEDS],
        "images": [paths.cache(ds, image_size(ds)) for ds in figure_datasets()],
        "masks": [paths.masks(ds, image_size(ds)) for ds in anomaly],
        "predictions": beside(probes + supervised, files["predictions"]),
        "classifiers": beside(probes, files["probe"]) + beside(supervised, files["supervised"]),
        "encoders": beside(classification_pretrain_targets(), files["encoder"]),
        "scores": beside(anomaly_targets() + mapped, files["scores"]),
        "maps": beside(mapped, files["maps"]),
    }


def _table_report(name):
    """The HTML rendering of a table, marked for the report with the caption of its kind."""
    stage = name if name in STAGE_TABLES else "comparison"
    return report(
        paths.table(name, "html"),
        caption=f"../report/table_{stage}.rst",
        category="Tables" if stage != "comparison" else "Published vs ours",
        labels={"table": name},
    )


@register_targets
def report_targets():
    """Final outputs of the report stage: tables, comparisons, figures, MLflow sentinel."""
    out = [paths.table(n, ext) for n in TABLE_NAMES for ext in ("parquet", "md", "html")] + CLAIMS_OUTPUTS
    if config["report"]["figures"]:
        out.append(paths.FIGURES_DIR)
    out.append(paths.TRACK_MARKER)
    return out
