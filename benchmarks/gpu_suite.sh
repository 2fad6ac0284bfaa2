#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md, in one go: run from benchmarks/ on a CUDA machine with the project's .venv.
#   bash gpu_suite.sh [OUT_DIR]        (default results/gpu; each row writes OUT_DIR/NAME.json)
# Every row is one plain command; copy a line to rerun a single row. Peak bf16 TFLOPS for MFU are looked up
# from the device name (common.py); pass --peak-tflops to diffusion_train_step.py for other accelerators.
set -euo pipefail
out=${1:-results/gpu}
py=${PYTHON:-../.venv/bin/python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" || true

# LightningDiT-XL/1 training step on 16x16x32 latents: eager, compiled, sync-checked, gradient checkpointing
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 20 --json "$out/ldit_xl1_bf16.json"
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 20 --compile --json "$out/ldit_xl1_bf16_compile.json"
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 5 --check-sync --json "$out/ldit_xl1_sync_check.json"
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 10 --gradient-checkpointing --json "$out/ldit_xl1_ckpt.json"
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 10 --precision fp32 --json "$out/ldit_xl1_tf32.json"
$py diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 20 --compile --compile-mode max-autotune-no-cudagraphs --json "$out/ldit_xl1_bf16_autotune.json"
$py diffusion_train_step.py --arch reg-sit-xl/1 --batch 64 --steps 20 --compile --json "$out/reg_xl1_bf16_compile.json"

# compile time of each full-size training step (regional, inductor; one JSON line per step)
$py compile_time.py --batch 8 --json "$out/compile_time.jsonl"

# sampling: one guided Euler step (CFG doubles the batch)
$py sampling_step.py --arch lightningdit-xl/1 --batch 128 --steps 10 --bf16 --json "$out/ldit_xl1_sampling_bf16.json"

# tokenizer: encode / decode, training step (stage 0)
$py tokenizer.py --batch 32 --iters 5 --bf16 --json "$out/tokenizer_bf16.json"
$py tokenizer.py --batch 32 --iters 5 --bf16 --channels-last --json "$out/tokenizer_bf16_channels_last.json"
$py tokenizer_train_step.py --batch 8 --steps 5 --precision bf16 --json "$out/tokenizer_train_bf16.json"

# evaluation and analysis
$py inception_features.py --batch 250 --iters 8 --json "$out/inception.json"
$py vfm_features.py --vfm siglip2-large-patch16-512 --size 256 --batch 64 --iters 5 --json "$out/vfm_siglip2L.json"
$py cknna.py --n 10000 --dim 1024 --device cuda --json "$out/cknna.json"
$py data_loading.py --num 2048 --size 256 --workers 8 --json "$out/data_loading.json"
echo "results in $out"
