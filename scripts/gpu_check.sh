#!/usr/bin/env bash
# One prepared pass of the GPU checks (benchmarks + a short GPU pretraining/finetuning run) on a
# CUDA machine that has PyTorch and transformers but no network: the pure-Python wheels it needs
# (repacked detectron2 and its helpers, jsonschema) come in .whl/ (see README "Performance"), a
# small random-init BERT with the demo's tokenizer in .devmodel/tinybert, demo features in
# resources/. Figures go to stdout and, one file per check, to $OUT (default: gpu-check/).
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
work=$(mktemp -d)  # installed wheels and the short runs' models, checkpoints and caches
site=$work/site gpu=$work/gpu
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

check() {  # check NAME SECONDS CMD...: run with a time limit, keep the output
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.txt"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

check pretrain_bench 150 python3 -m benchmarks.pretrain --device cuda --amp --preset bert-base --batch 64 --steps 10 --warmup 3
check adapters_bench 120 python3 -m benchmarks.adapters --device cuda
check retrieval_bench 120 python3 -m benchmarks.retrieval --device cuda
check extract_bench 150 python3 -m benchmarks.extraction --device cuda --images 64 --height 480 --width 640 \
    --detector-config COCO-Detection/faster_rcnn_R_101_C4_3x.yaml --proposals 1000 --max-boxes 100 \
    --batch-size 8 --skip rss read
check butd_bench 150 python3 -m benchmarks.extraction --device cuda --images 64 --height 600 --width 800 \
    --config extract/configs/butd_R101_C4_attr.yaml --min-size 600 --max-size 1000 --proposals 300 \
    --max-boxes 100 --batch-size 8 --skip rss read
check train_bench 150 python3 -m benchmarks.extraction --train --device cuda --images 16 --height 224 --width 224 \
    --min-size 224 --max-size 373 --batch-size 4 --train-iterations 10 --repeats 1
overrides='{"model": {"bert": ".devmodel/tinybert"}, "pretrain": {"data": {"num_workers": 2},
  "train": {"max_steps": 12, "checkpoint_every": 4, "log_every": 2, "precision": "bf16"}}}'
check pretrain_gpu 150 torchrun --standalone --nproc_per_node 1 -m cavl.pretrain --config config.yaml \
    --config "$overrides" --train resources/tasks/pretrain/train.parquet \
    --val resources/tasks/pretrain/val.parquet --features resources/features --out $gpu/model --train-log "$OUT/pretrain_log.jsonl" \
    --curves $gpu/curves.png --checkpoints $gpu/checkpoints
check finetune_gpu 120 torchrun --standalone --nproc_per_node 1 -m cavl.finetune --task vqa --config config.yaml \
    --config '{"finetune": {"tasks": {"vqa": {"method": "adapter2", "epochs": 1}}}}' \
    --backbone $gpu/model --train resources/tasks/vqa/train.parquet \
    --features resources/features/coco/index.parquet --out $gpu/vqa --train-log "$OUT/finetune_log.jsonl" \
    --curves $gpu/vqa.png --checkpoints $gpu/vqa-checkpoints --cache $gpu/vqa-cache
check evaluate_gpu 60 python3 -m cavl.evaluate --task vqa --model $gpu/vqa --backbone $gpu/model \
    --eval resources/tasks/vqa/val.parquet --split val --train resources/tasks/vqa/train.parquet \
    --features resources/features/coco/index.parquet --metrics "$OUT/vqa_metrics.json" \
    --predictions $gpu/vqa_predictions.parquet
