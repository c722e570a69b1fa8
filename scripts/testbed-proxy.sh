#!/usr/bin/env bash
# The testbed's proxy reward model, as docs/testbed.md reports it: gold-labelled pairs from
# pi_init (SmolLM2-135M-Instruct) on the train split with 25% label noise (Coste et al.), noise-free
# held-out pairs on the disjoint test split, then Bradley-Terry training of the all-MiniLM-L6-v2
# encoder + head (all layers; docs/testbed.md says why not SmolLM2) and its held-out accuracy.
# `r2m demo` / `r2m experiment` do the same into <grid>/shared/.
# Usage: scripts/testbed-proxy.sh [OUT_DIR] [N_TRAIN_PROMPTS] [N_TEST_PROMPTS]
set -euo pipefail
out=${1:-runs/testbed}
ntrain=${2:-512}
ntest=${3:-128}
r2m=${R2M_BIN:-./r2m}
mkdir -p "$out"
$r2m testbed make-pairs --device cpu --split train --n-prompts "$ntrain" --flip 0.25 --seed 0 --out "$out/pairs-train.jsonl"
$r2m testbed make-pairs --device cpu --split test --n-prompts "$ntest" --flip 0 --seed 1 --out "$out/pairs-test.jsonl"
$r2m train-rm --device cpu --model all-minilm-l6-v2 --data "$out/pairs-train.jsonl" \
  --eval-data "$out/pairs-test.jsonl" --out "$out/proxy-rm" --seed 0 \
  --set train.lr=1e-4 --set train.epochs=4 --set train.micro_batch=8 \
  --set train.warmup_ratio=0.05 --set train.eval_every=24 --set train.save_every=48 --set data.max_length=256
