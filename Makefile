# mdlcap — the two commands a reader needs are `make all` and `make test`.
#   make all                         set up .venv, run every notebook on $(PARAMS)
#   make test                        set up .venv, run the test suite (notebooks at smoke size)
#   make nb NB=01                    run one notebook
#   make bench                       solver / scoring benchmarks -> results/bench/
#   make report                      collect results/$(RUN)/ into REPORT.md
#   make lab                         JupyterLab on the notebooks
#   make clean / make distclean      remove run outputs and caches / also the venv
# PARAMS=params/<name>.yaml selects a run; its outputs go to results/<name>/.

PYTHON   ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
PARAMS   ?= params/tiny.yaml
RUN      := $(basename $(notdir $(PARAMS)))
OUTDIR   := results/$(RUN)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP    := $(VENV)/.installed

# The embedded default needs no network; set HF_HUB_OFFLINE=0 to let a 7B run download weights.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= $(HF_HUB_OFFLINE)
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PYTHONHASHSEED := 0
# OpenMP threads sleep instead of spinning while they wait: on a shared 2-core machine spinning
# made torch up to ~18x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: all test nb bench report lab clean distclean venv
all: $(STAMP)
	@mkdir -p $(OUTDIR)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(PARAMS))"; \
	  TQDM_DISABLE=1 $(BIN)/papermill -k python3 --cwd . --log-output --no-progress-bar \
	    $$nb $(OUTDIR)/$$(basename $$nb) -p params_path $(PARAMS) || exit 1; \
	done

nb: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make nb NB=01 [PARAMS=...]"; exit 2; }
	@mkdir -p $(OUTDIR)
	@nb=$$(ls notebooks/$(NB)_*.ipynb | head -1); test -n "$$nb" || exit 2; \
	TQDM_DISABLE=1 $(BIN)/papermill -k python3 --cwd . --log-output --no-progress-bar \
	  $$nb $(OUTDIR)/$$(basename $$nb) -p params_path $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

report: $(STAMP)
	$(BIN)/python -m mdlcap.study.report $(OUTDIR) $(if $(filter tiny,$(RUN)),--readme README.md)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, exactly pinned: anything looser pulls a multi-GB CUDA build on a CPU machine
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf results/smoke results/bench .cache .pytest_cache .hypothesis
distclean: clean
	rm -rf $(VENV)
