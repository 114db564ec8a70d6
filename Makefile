# mdlcap — the two commands a reader needs are `make all` and `make test`.
#   make all                         set up .venv, run every notebook whose inputs changed, on $(PARAMS)
#   make test                        set up .venv, run the test suite (notebooks at smoke size)
#   make nb NB=01                    run one notebook (whatever changed)
#   make check-results [REV=HEAD]    compare the tables under results/$(RUN)/ with those committed at REV
#   make bench                       solver / scoring benchmarks -> results/bench/
#   make report                      collect results/$(RUN)/ into REPORT.md
#   make lab                         JupyterLab on the notebooks
#   make clean / make distclean      remove run outputs and caches / also the venv
# PARAMS=params/<name>.yaml selects a run; its outputs go to results/<name>/.
#
# The notebook graph: each notebook's target is its manifest, results/$(RUN)/<notebook>/manifest.json,
# which depends on the notebook, the params file, the package sources the notebook imports and the
# manifests of the notebooks whose outputs it reads (mdlcap/study/pipeline.py: UPSTREAM). Staleness
# is decided by content: every manifest records the hashes of its inputs, and at parse time
# `python -m mdlcap.study.pipeline sync` compares them with the current files, writes the rules
# (.cache/pipeline/$(RUN)/graph.mk) and sets stamps and file times so that make, `make -n` included,
# reruns exactly the notebooks whose inputs changed (a fresh clone's checkout times do not count;
# a file touched since does). `make all` runs independent notebooks side by side (JOBS=2).

PYTHON   ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
PARAMS   ?= params/tiny.yaml
RUN      := $(basename $(notdir $(PARAMS)))
OUTDIR   := results/$(RUN)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NB_MANIFESTS := $(patsubst notebooks/%.ipynb,$(OUTDIR)/%/manifest.json,$(NOTEBOOKS))
# make -j starts ready targets in the order `all` lists them: the longest chains first (00, 02, then
# 07 and 08, 03), the short ones last, so both slots stay busy to the end. Order only: every
# notebook still runs, and none reads another's outputs except through its manifest rule.
NB_FIRST := 00 02 07 08 03
NB_ORDER := $(foreach n,$(NB_FIRST),$(filter $(OUTDIR)/$(n)_%,$(NB_MANIFESTS))) \
            $(filter-out $(foreach n,$(NB_FIRST),$(OUTDIR)/$(n)_%),$(NB_MANIFESTS))
STAMP    := $(VENV)/.installed
PIPE     := .cache/pipeline/$(RUN)
REV      ?= HEAD
# curvlinops (tests/test_scores_oracle.py) and its dependencies, torchvision left out (see the venv rule)
ORACLE   := curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 unfoldNd==0.2.3 einconv==0.1.0 \
            linear_operator==0.6.1 einops==0.8.2 opt_einsum==3.4.0

# The embedded default needs no network; set HF_HUB_OFFLINE=0 to let a 7B run download weights.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= $(HF_HUB_OFFLINE)
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PYTHONHASHSEED := 0
# OpenMP threads sleep instead of spinning while they wait: on a shared 2-core machine spinning
# made torch up to ~18x slower.
export OMP_WAIT_POLICY ?= PASSIVE
# Notebook runs: one thread in every pool from the first import on, so no number depends on the
# machine's core count (mdlcap.study.run.start() then pins params' run.threads, default 1).
NB_ENV   := TQDM_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PAPERMILL = $(NB_ENV) $(BIN)/papermill -k python3 --cwd . --log-output --no-progress-bar

# Judge the notebooks by content before make looks at file times (only for goals that run them).
# Needs only the standard library, so it works before the venv exists.
PIPE_PY  := $(firstword $(wildcard $(BIN)/python) $(shell command -v $(PYTHON) python3 2>/dev/null))
ifneq ($(filter all $(OUTDIR)/%,$(or $(MAKECMDGOALS),all)),)
  PIPE_SYNC := $(shell PYTHONPATH=. $(PIPE_PY) -m mdlcap.study.pipeline sync --root $(CURDIR) --params $(PARAMS) $(if $(VERBOSE),-v) || echo failed)
  ifneq ($(PIPE_SYNC),)
    $(warning pipeline sync failed: every notebook counts as stale)
  endif
  -include $(PIPE)/graph.mk
endif

.PHONY: all test nb bench report lab clean distclean venv check-results
# `make all` runs independent notebooks side by side on two processes (JOBS=1 for one at a time);
# notebook 03 also spreads its cells over params' run.workers processes. Neither changes a number.
JOBS     ?= 2
ifneq ($(filter all,$(or $(MAKECMDGOALS),all)),)
  MAKEFLAGS += --jobs=$(JOBS) --output-sync=line
endif
all: $(NB_ORDER)

# One notebook: its further prerequisites (sources, upstream manifests, stamp) are in graph.mk.
$(NB_MANIFESTS): $(OUTDIR)/%/manifest.json: notebooks/%.ipynb $(PARAMS) | $(STAMP)
	@echo "== notebooks/$*.ipynb ($(PARAMS))"
	@mkdir -p $(OUTDIR)
	$(PAPERMILL) notebooks/$*.ipynb $(OUTDIR)/$*.ipynb -p params_path $(PARAMS)

# A stamp sync did not write (sync failed): its notebook counts as stale.
$(PIPE)/%.stamp: ;

nb: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make nb NB=01 [PARAMS=...]"; exit 2; }
	@mkdir -p $(OUTDIR)
	@nb=$$(ls notebooks/$(NB)_*.ipynb | head -1); test -n "$$nb" || exit 2; \
	$(PAPERMILL) $$nb $(OUTDIR)/$$(basename $$nb) -p params_path $(PARAMS)

check-results: $(STAMP)
	$(BIN)/python -m mdlcap.study.check_results $(OUTDIR) --rev $(REV)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

report: $(STAMP)
	$(BIN)/python -m mdlcap.study.report $(OUTDIR) $(if $(filter tiny,$(RUN)),--readme README.md)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

venv: $(STAMP)
# torch first, exactly pinned: anything looser pulls a multi-GB CUDA build on a CPU machine.
# The test oracle goes in without pip's resolution: backpack-for-pytorch requires torchvision,
# and PyPI's torchvision ("operator torchvision::nms does not exist") breaks transformers' model
# imports on the CPU torch; curvlinops never needs it. A .venv that links to another checkout's
# venv is left alone (its editable install would move here). One shell line with no $$(MAKE),
# so `make -n` only prints it.
$(STAMP): pyproject.toml
	@if test -L $(VENV); then \
	  echo "$(VENV) links to another checkout's venv: not reinstalling into it"; \
	else set -e; \
	  test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	  $(BIN)/python -m pip install -q --upgrade pip; \
	  $(BIN)/python -m pip install -q torch==2.13.0; \
	  $(BIN)/python -m pip install -q -e '.[dev]'; \
	  $(BIN)/python -m pip install -q --no-deps $(ORACLE); \
	  touch $(STAMP); \
	fi

clean:
	rm -rf results/smoke results/bench .cache .pytest_cache .hypothesis
distclean: clean
	rm -rf $(VENV)
