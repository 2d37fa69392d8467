# Two commands for a fresh clone: `make demo` and `make test`. Both create or reuse .venv and
# (re)install the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow gpu bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,test,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hero demo --out demo-out

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples
	$(PY) -m mypy --strict src/hero_core src/hero_adapters
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# On a machine with CUDA (under 8 minutes): the gpu-marked tests, then the encoder and full-model prefill
# benchmarks on the device; their records land in benchmarks/results/ with the machine named.
gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make gpu: no CUDA device')"
	$(PY) -m pytest -q -m gpu
	$(VENV)/bin/hero bench encode --device cuda --repeats 3 --write-results
	$(VENV)/bin/hero bench prefill --device cuda --full-model

bench: $(STAMP)
	$(VENV)/bin/hero bench all

docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
