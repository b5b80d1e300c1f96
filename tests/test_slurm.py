"""The workflow through a real single-node Slurm (scripts/local-slurm.sh) with profiles/slurm.

The fixture installs (root only) and starts the local Slurm: partitions `main` and `gpu`, two
stand-in GPUs. The workflow runs in a temporary working copy on a tiny ELPV config through a copy
of profiles/slurm whose sizes are clamped to this machine (2 cores); partitions and GPU requests
are kept exactly as in the real profile. The test cancels a running GPU job with `scancel`,
checks that Snakemake reports the cancellation and fails, then reruns to completion and checks
where every job ran. Without root and without Slurm, or without the executor plugin (the `slurm`
extra, `make env-slurm`), the tests skip, except under CI=true.

Time budget: every Slurm job costs about 15 s of Snakemake start-up inside the job plus the
plugin's polling (+10 s per idle poll), so about 35 s per link of a job chain. The data stage
(4 chained jobs, already covered by the local workflow tests) therefore runs locally first; the
experiment jobs (pretraining, supervised baseline, probe) go through Slurm.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import skip_unless_ci
from workflow_helpers import ROOT, VENV_BIN, snakemake, working_copy, write_config

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "local-slurm.sh"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
# docs/CONTRACTS.md: rule names the profile sets resources by.
GPU_RULES = {"pretrain_diffusion", "diffusion_views", "pretrain_contrastive", "train_supervised", "ddad", "patchcore",
             "budget_pretrain"}
# Run by the main Snakemake process, never submitted (Snakefile `localrules`).
LOCAL_RULES = {"aggregate", "figures", "track"}
# Tiny real run: ELPV (PyPI package) at 32 px, 1 epoch, SimCLR only, classification only.
TINY_CONFIG = {
    "run_name": "slurm-test",
    "seeds": [0],
    "label_fractions": [1.0],
    "device": "auto",
    "datasets": {
        "elpv": {
            "source": {"kind": "pip", "package": "elpv-dataset"},
            "layout": "elpv",
            "image_size": 32,
            "max_per_class": 6,
            "tasks": ["classification"],
        }
    },
    "backbones": ["resnet18"],
    "diffusion": {"enabled": False},
    "contrastive": {"methods": ["simclr"], "epochs": 2, "batch_size": 8},
    "supervised": {"enabled": True, "epochs": 1, "batch_size": 8},
    "probe": {"epochs": 2, "controls": []},  # no control probe: three jobs with results
    "anomaly": {"features": ["simclr"]},
    "patchcore": {"enabled": False},
    "ddad": {"enabled": False},
    "report": {"figures": False},
}
RUN_TIMEOUT = 420


# ----------------------------------------------------------------------------- profile contents
@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory) -> set[str]:
    """Rule names of the real workflow (`snakemake --list-rules`, embedded default config); listed once."""
    project = working_copy(tmp_path_factory.mktemp("rules"))
    proc = snakemake(project, "--list-rules", timeout=120)
    return {line.strip() for line in proc.stdout.splitlines() if re.fullmatch(r"\w+", line.strip())} - {"all"}


def test_profile_puts_gpu_rules_on_gpu_partition_and_documents_every_entry(workflow_rules):
    text = PROFILE.read_text()
    prof = yaml.safe_load(text)
    assert prof["executor"] == "slurm"
    # No slurmdbd here: status through squeue, and MinJobAge (300 s by default) >= 3 x init seconds.
    assert prof["slurm-status-command"] == "squeue"
    assert 3 * prof["slurm-init-seconds-before-status-checks"] <= 300
    defaults = prof["default-resources"]
    assert defaults["slurm_partition"] == "main"
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(defaults)
    rules = prof["set-resources"]
    # Every submitted rule of the workflow has its own entry (a new rule must be sized for the
    # cluster); local rules have none.
    in_workflow = workflow_rules
    assert LOCAL_RULES <= in_workflow and not LOCAL_RULES & set(rules)
    assert set(rules) >= (in_workflow - LOCAL_RULES) | GPU_RULES, sorted(in_workflow - LOCAL_RULES - set(rules))
    for name in GPU_RULES:
        assert rules[name]["gpu"] == 1, name
        assert rules[name]["slurm_partition"] == "gpu", name
        assert {"runtime", "mem_mb"} <= set(rules[name]), name
    for name in set(rules) - GPU_RULES:
        assert "gpu" not in rules[name] and "gres" not in rules[name], name
        assert rules[name].get("slurm_partition", "main") == "main", name
    # Every rule entry carries a comment saying what the job does.
    for name in rules:
        assert re.search(rf"^  {name}:\s+#", text, re.M), f"set-resources.{name} has no comment"


def test_profile_groups_name_workflow_rules_and_have_a_size(workflow_rules):
    prof = yaml.safe_load(PROFILE.read_text())
    groups = dict(entry.split("=") for entry in prof["groups"])
    sizes = {name: int(n) for name, n in (entry.split("=") for entry in prof["group-components"])}
    assert set(groups) <= workflow_rules - LOCAL_RULES - GPU_RULES  # small CPU rules only
    assert set(groups.values()) == set(sizes) and all(n >= 1 for n in sizes.values())


def test_default_profile_sets_no_resources():
    # profiles/default is loaded under --profile profiles/slurm too: it must not override resources.
    prof = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert prof["rerun-incomplete"] is True and prof["keep-going"] is False
    assert not {"default-resources", "set-resources", "executor", "jobs"} & set(prof)


def test_slurm_plugin_is_an_extra_not_a_base_dependency():
    # Snakemake imports every installed executor plugin when it starts; the Slurm one then runs
    # `scontrol show config`, which blocks ~9 s without a reachable controller. Plain local runs
    # must not pay that, so only the `slurm` extra (make env-slurm) installs it.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plugin = "snakemake-executor-plugin-slurm"
    assert not [d for d in project["dependencies"] if d.startswith(plugin)]
    assert [d for d in project["optional-dependencies"]["slurm"] if d.startswith(f"{plugin}==")]
    assert plugin not in (ROOT / "envs" / "defectbench.yaml").read_text()


# ----------------------------------------------------------------------------- the local Slurm
def _slurm_up() -> bool:
    return shutil.which("sbatch") is not None and subprocess.run(
        [str(SCRIPT), "status"], capture_output=True, text=True
    ).returncode == 0


@pytest.fixture(scope="module")
def slurm(real_slurm_conf):
    """A running local Slurm; started here (and stopped afterwards) when it was not running."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the Slurm executor plugin is missing: run make env-slurm (the 'slurm' extra)")
        pytest.skip("the Slurm executor plugin is not installed (make env-slurm)")
    started = False
    if not _slurm_up():
        if os.geteuid() != 0:
            skip_unless_ci("no running Slurm and not root (scripts/local-slurm.sh install && start need root)")
        subprocess.run([str(SCRIPT), "install"], check=True, timeout=600)
        subprocess.run([str(SCRIPT), "start"], check=True, timeout=120)
        started = True
    yield
    if started:
        subprocess.run([str(SCRIPT), "stop"], check=False, timeout=60)


def ci_profile(project: Path) -> str:
    """profiles/slurm with sizes clamped to this 2-core node and fast polling; same partitions/GPUs.
    Half the cores per job at most, so two jobs (e.g. pretraining and the supervised baseline) run
    side by side."""
    prof = yaml.safe_load(PROFILE.read_text())
    cpus = max(1, (os.cpu_count() or 1) // 2)
    for res in [prof["default-resources"], *prof["set-resources"].values()]:
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(res["cpus_per_task"], cpus)
        if "mem_mb" in res:
            res["mem_mb"] = min(res["mem_mb"], 3000)
        if "runtime" in res:
            res["runtime"] = min(res["runtime"], 15)
    prof["slurm-init-seconds-before-status-checks"] = 2
    prof["latency-wait"] = 5
    dest = project / "profiles" / "slurm-ci"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return str(dest)


def _jobs(since: int, workdir: Path) -> list[dict[str, str]]:
    """This test's Slurm jobs (id > since, submitted from ``workdir``, so another Slurm user's jobs
    never count): id, rule, state. The executor submits with `--comment rule_<rule>` or
    `rule_<rule>_wildcards_<values>`; a group job's <rule> is `<group>_<its rules>`."""
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%i|%k|%T|%Z"], capture_output=True, text=True, check=True
    ).stdout
    jobs = []
    for line in out.splitlines():
        jid, comment, state, where = line.strip().split("|")
        if int(jid) > since and comment.startswith("rule_") and Path(where) == workdir:
            rule = comment.removeprefix("rule_").split("_wildcards_")[0]
            jobs.append({"id": jid, "rule": rule, "state": state})
    return jobs


def _job_fields(jid: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True, check=True).stdout
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def _max_job_id() -> int:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True, text=True, check=True)
    return max((int(x) for x in out.stdout.split()), default=0)


DATA_TARGETS = [
    "results/data/elpv/manifest.parquet",
    "results/data/elpv/cache-32.npy",
    "results/data/elpv/splits/classification-seed0.parquet",
]
ENCODER = "results/pretrain/simclr/elpv/classification/resnet18/seed0/encoder.pt"
PROBE = "results/probe/simclr/elpv/resnet18/seed0/labels100/metrics.json"
CONTROL_PROBE = "results/probe/random/elpv/resnet18/seed0/labels100/metrics.json"
TABLE = "results/tables/classification.parquet"  # aggregate: a local rule, never submitted
TARGETS = [PROBE, CONTROL_PROBE, "results/supervised/elpv/resnet18/seed0/labels100/metrics.json", TABLE]


def test_workflow_through_slurm_with_cancel_and_rerun(slurm, tmp_path):
    project = working_copy(tmp_path)
    # With the random-init control probe: two probe jobs, packed into one Slurm group job.
    write_config(project, {**TINY_CONFIG, "probe": {**TINY_CONFIG["probe"], "controls": ["random"]}})
    profile = ci_profile(project)
    config = ["--configfile", "config/test.yaml"]
    # The data stage locally (see the module docstring), the experiment jobs through Slurm.
    # (targets first: --configfile takes every argument after it)
    snakemake(project, *DATA_TARGETS, "--cores", "2", *config, timeout=300)
    base = ["--profile", profile, "--snakefile", str(project / "Snakefile"), "--directory", str(project), *config]
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg")
    since = _max_job_id()

    # Run 1 (probe only): cancel the contrastive pretraining (a GPU rule) while it runs.
    run1 = tmp_path / "run1.log"
    with run1.open("w") as log1:
        proc = subprocess.Popen(
            ["timeout", "-k", "30", str(RUN_TIMEOUT), str(VENV_BIN / "snakemake"), PROBE, *base],
            cwd=project, env=env, stdout=log1, stderr=subprocess.STDOUT, text=True,
        )
        cancelled = None
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            running = [j for j in _jobs(since, project) if j["rule"] == "pretrain_contrastive" and j["state"] == "RUNNING"]
            if running:
                cancelled = running[0]["id"]
                fields = _job_fields(cancelled)
                # The real GPU request reached Slurm and was scheduled on the gpu partition.
                assert fields["Partition"] == "gpu", fields
                assert re.search(r"gpu[:=]1\b", fields.get("TresPerJob", "")), fields
                subprocess.run(["scancel", cancelled], check=True)
                break
            time.sleep(0.25)
        assert cancelled, f"pretrain_contrastive never ran:\n{run1.read_text()[-3000:]}"
        rc = proc.wait(timeout=RUN_TIMEOUT)
    out1 = run1.read_text()
    assert rc != 0 and rc not in (124, 137), f"expected a failed run, got rc={rc}:\n{out1[-3000:]}"
    assert f"SLURM-job '{cancelled}' failed" in out1 and "CANCELLED" in out1, out1[-3000:]
    assert not (project / ENCODER).exists()

    # Run 2: the rerun completes (the cancelled job is submitted again, the supervised baseline
    # runs beside it on the other stand-in GPU; both probes run in one Slurm job, the profile's
    # `probes` group; the table is aggregated by the main Snakemake process).
    proc2 = snakemake(project, *TARGETS, *base, timeout=RUN_TIMEOUT)
    out2 = proc2.stdout + proc2.stderr
    assert (project / ENCODER).exists(), out2[-3000:]
    for target in TARGETS:
        assert (project / target).exists(), (target, out2[-3000:])
    # The GPU rules fell back to the CPU (stand-in GPUs) and recorded it.
    metrics = json.loads((project / ENCODER).with_name("metrics.json").read_text())
    assert metrics["device"] == "cpu"

    # Where every job ran: GPU rules on `gpu` with one GPU, the rest on `main` without; the two
    # probes as one group job (`probes_linear_probe`), aggregate not submitted at all.
    jobs = _jobs(since, project)
    seen = Counter(j["rule"] for j in jobs)
    assert seen == {"pretrain_contrastive": 2, "train_supervised": 1, "probes_linear_probe": 1}, jobs
    for job in jobs:
        fields = _job_fields(job["id"])
        if job["id"] == cancelled:
            assert job["state"] == "CANCELLED"
            continue
        assert job["state"] == "COMPLETED", (job, fields)
        if job["rule"] in GPU_RULES:
            assert fields["Partition"] == "gpu", (job, fields)
            assert re.search(r"gpu[:=]1\b", fields.get("TresPerJob", "")), (job, fields)
        else:
            assert fields["Partition"] == "main", (job, fields)
            assert "gpu" not in fields.get("TresPerJob", "(null)"), (job, fields)

    # An unchanged rerun through Slurm submits nothing.
    proc3 = snakemake(project, *TARGETS, *base, timeout=120)
    assert "Nothing to be done" in proc3.stdout + proc3.stderr
    assert _max_job_id() == max(int(j["id"]) for j in jobs)
