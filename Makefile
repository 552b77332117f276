# The README's two commands. Each creates .venv on first use (scripts/setup_env.sh) and
# reuses it afterwards; the stamp is renewed when a pin or the set-up script changes.
VENV ?= .venv
STAMP := $(VENV)/.cavl-installed
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: demo test env clean-results

env: $(STAMP)

$(STAMP): requirements.txt scripts/setup_env.sh scripts/install_detectron2.sh scripts/repack_detectron2.py pyproject.toml
	bash scripts/setup_env.sh $(VENV)
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(SNAKEMAKE) --cores all

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/python -m pytest

clean-results:
	rm -rf resources results logs .snakemake data/demo
