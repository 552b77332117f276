# The README's two commands. Each creates .venv on first use (scripts/setup_env.sh) and
# reuses it afterwards; the stamp is renewed when a pin or the set-up script changes.
VENV ?= .venv
STAMP := $(VENV)/.cavl-installed
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: demo test test-fast env clean-results

env: $(STAMP)

$(STAMP): requirements.txt scripts/setup_env.sh scripts/install_detectron2.sh scripts/repack_detectron2.py pyproject.toml
	bash scripts/setup_env.sh $(VENV)
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(SNAKEMAKE) --cores all

# Every test, as CI runs it (.ci/run); the 15 slowest are listed at the end.
test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/python -m pytest --durations=15

# The fast tier: every module's unit tests, without the ones tests/conftest.py marks slow (runs
# of the workflow, SLURM, Chromium, torchrun, Detectron2 shards); a few minutes on 2 cores. A
# test that takes over FAST_TIMEOUT seconds (its fixtures included) fails: it belongs in the
# slow tier. Markers are strict (pyproject.toml): a misspelt marker is an error, not a no-op.
FAST_TIMEOUT ?= 60
test-fast: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/python -m pytest -m "not slow" --strict-markers \
		--timeout=$(FAST_TIMEOUT) --durations=15

clean-results:
	rm -rf resources results logs .snakemake data/demo
