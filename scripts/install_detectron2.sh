#!/usr/bin/env bash
# Install detectron2 into the environment of PYTHON (default: python on PATH).
#   bash scripts/install_detectron2.sh [PYTHON]
# Default: the PyPI sal-detectron2 wheel, repacked as pure Python (see repack_detectron2.py).
# DETECTRON2_SOURCE=<local checkout or git URL of detectron2>: the official source build instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python}
pip=("$python" -m pip --disable-pip-version-check)

if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    "${pip[@]}" install --no-build-isolation "$DETECTRON2_SOURCE"
    exit 0
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.10 sal-detectron2==0.7.2 -d "$wheels/in"
"$python" "$here/repack_detectron2.py" "$wheels"/in/sal_detectron2-*.whl "$wheels/out"
"${pip[@]}" install "$wheels"/out/sal_detectron2-0.7.2-py3-none-any.whl
