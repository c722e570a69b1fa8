#!/usr/bin/env bash
# The communication share of a data parallel RL step on this machine: the same few steps of the
# LLM-RM testbed (SmolLM2-135M-Instruct policy, every parameter trained so that AdamW's moments
# are large; the SmolLM2 proxy reward model, D_rm 576; R2M's method r2m) run as
#   1 process (both cores), 2 data parallel ranks (one core each), 2 ranks with --zero1, and
#   1 policy process + the reward model on its own rank (--rm-ranks 1),
# and prints, per layout, the mean step time, the seconds and bytes in collectives, the bytes sent
# to and received from the reward-model rank, and each rank's AdamW moments and peak memory.
#
#   scripts/dist-bench.sh [STEPS]        # default 3; needs the grid's proxy RM (configs/llm-rm.toml,
#                                        # `r2m experiment --config configs/llm-rm.toml --prepare-only`)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3}
r2m=${R2M_BIN:-target/release/r2m}
rm_model=${RM:-runs/llm-rm/shared/proxy-rm/model}
py=${R2M_HOME:-$HOME/.cache/r2m}/venv/bin/python
[ -d "$rm_model" ] || { echo "no proxy reward model at $rm_model (see the header)" >&2; exit 1; }
out=${OUT:-runs/dist-bench}
rm -rf "$out"
mkdir -p "$out"
sets=(--set "reward.model=\"$rm_model\"" --set "rl.steps=$steps" --set rl.eval_every=0 --set rl.save_every=0
    --set rl.generation_batch=8 --set 'policy.trainable={kind="all"}' --set 'r2m.method="r2m"'
    --set reward.gold_metrics=false)
# An archived run of the grid: its config is a whole rl config.
cp archive/llm-rm/runs/vanilla-grpo-s0/config.toml "$out/rl.toml"
# No evaluation: the steps alone are measured.
sed -i '/^final_eval_prompts/d' "$out/rl.toml"
run() {
    local name=$1 threads=$2
    shift 2
    echo "== $name" >&2
    /usr/bin/time -f "%e s wall" "$r2m" rl --config "$out/rl.toml" --quiet "${sets[@]}" --set "threads=$threads" \
        --set "out=\"$out/$name\"" "$@" > "$out/$name.stdout" 2> "$out/$name.stderr" || { tail -20 "$out/$name.stderr" >&2; exit 1; }
}
run one 2
run dp 1 --nproc 2
run zero1 1 --nproc 2 --zero1
run rm-rank 1 --nproc 2 --rm-ranks 1
"$py" - "$out" <<'EOF'
import json, os, re, statistics, sys
out = sys.argv[1]
print("| layout | s/step | s in collectives | MB in collectives / step | KB to RM / step | KB from RM / step | AdamW moments MB / rank | peak RSS MB / rank |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ["one", "dp", "zero1", "rm-rank"]:
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][1:]  # the first step warms up
    mean = lambda k: statistics.mean(r.get(k, 0.0) for r in rows)
    logs = []
    d = f"{out}/{name}/logs"
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        logs.append(open(f"{d}/{f}").read())
    mom = [float(m) for l in logs for m in re.findall(r"AdamW moments ([0-9.]+) MB", l)]
    rss = [float(m) for l in logs for m in re.findall(r"peak resident memory ([0-9.]+) MB", l)]
    fmt = lambda v: " / ".join(f"{x:.0f}" for x in v) if v else "-"
    print(f"| {name} | {mean('time/step'):.1f} | {mean('time/dist'):.2f} | {mean('dist/bytes') / 1e6:.0f} | "
          f"{mean('dist/bytes_to_rm') / 1e3:.1f} | {mean('dist/bytes_from_rm') / 1e3:.1f} | {fmt(mom)} | {fmt(rss)} |")
EOF
