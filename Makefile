# The two commands of the README:
#   make demo   create .venv if missing, run the embedded default config end to end
#   make test   create .venv if missing, run the whole test suite
#   make env-slurm  add the Slurm executor plugin (the `slurm` extra) for `--profile profiles/slurm`
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= all
# Snakemake jobs (and Slurm jobs, which inherit the environment) must find the venv's tools.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test env env-slurm lint clean-results

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

env-slurm: $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[slurm]'

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml --report results/report.html

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint --configfile config/config.yaml

clean-results:
	rm -rf results/data results/pretrain results/supervised results/probe results/anomaly results/clustering results/tables results/figures results/mlflow.db logs .snakemake
