"""The committed reference results (results/reference/, issue 7) are consistent with themselves.

* Every committed Markdown table is exactly what ``defectbench.tables`` renders from the committed
  Parquet file beside it (so nobody hand-edits a number in the Markdown).
* Every row records where it came from: config hash, code version, library versions, and it comes
  from one run of config/reference.yaml (one run name, the config file's sha256 in the README).
* The README links every table and figure it talks about, and they exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from defectbench import reference, tables

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
TABLES = REFERENCE / "tables"
PARQUETS = sorted(TABLES.glob("*.parquet"))


def test_reference_tables_are_committed():
    names = {p.stem for p in PARQUETS}
    assert set(tables.STAGES) <= names, f"missing stage tables in {TABLES}: {set(tables.STAGES) - names}"
    assert any(n.startswith("comparison_") for n in names)


@pytest.mark.parametrize("parquet", PARQUETS, ids=[p.stem for p in PARQUETS])
def test_markdown_regenerates_from_parquet(parquet: Path):
    md = parquet.with_suffix(".md")
    assert md.is_file(), f"{md} is missing: run `defectbench tables --markdown-only --out {TABLES}`"
    assert tables.render_markdown(parquet) == md.read_text(), f"{md} differs from its Parquet file"


@pytest.mark.parametrize("stage", tables.STAGES)
def test_rows_record_provenance(stage: str):
    df = pd.read_parquet(TABLES / f"{stage}.parquet")
    assert len(df) > 0, f"{stage}: no rows"
    for col in ("config_hash", "code_version", "versions", "seed", "wall_time_s"):
        assert df[col].notna().all(), f"{stage}.{col} has empty cells"
    assert df["config_hash"].str.fullmatch(r"[0-9a-f]{12}").all()
    versions = df["versions"].map(json.loads)
    assert versions.map(lambda v: "torch" in v and "defectbench" in v).all()
    # at least three seeds for every configuration (the minimum)
    keys = [c for c in ("dataset", "method", "scorer", "features", "weighting", "labels_pct", "task")
            if c in df.columns and c != "seed"]
    seeds = df.groupby(keys, dropna=False)["seed"].nunique()
    assert (seeds >= 3).all(), f"{stage}: configurations with < 3 seeds:\n{seeds[seeds < 3]}"


def test_readme_names_the_config_it_came_from_and_links_exist():
    readme = (REFERENCE / "README.md").read_text()
    sha = hashlib.sha256((ROOT / "config" / "reference.yaml").read_bytes()).hexdigest()
    assert sha in readme, "config/reference.yaml changed since the reference run: rerun it or revert the config"
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links
    for link in links:
        if "://" in link:
            continue
        assert (REFERENCE / link).resolve().exists(), f"README links {link}, which does not exist"


def test_readme_number_tables_regenerate_from_parquet():
    readme = (REFERENCE / "README.md").read_text()
    committed = reference.readme_sections(readme)
    rendered = reference.render_sections(TABLES)
    assert set(committed) == set(rendered), "README lacks generated sections (python -m defectbench.reference)"
    for name, body in rendered.items():
        assert committed[name] == body, f"README section {name} is stale: python -m defectbench.reference {REFERENCE}"
