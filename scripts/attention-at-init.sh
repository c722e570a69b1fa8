#!/usr/bin/env bash
# How sharp R2M's cross-attention is at its N(0, 0.02) init, for the policy's own hidden states h
# (SmolLM2-135M-Instruct, `r2m forward`) and two kinds of query H_last: a decoder RM's (the last
# token's final hidden state of the same model, as in the paper's decoder RMs) and an encoder RM's
# L2-normalised sentence embedding (all-MiniLM-L6-v2, norm 1, as the testbed's proxy). Prints, per
# response, the hidden-state norms, the logits' standard deviation over the tokens and the
# normalised attention entropy (1 = uniform). A last column is the testbed switch of r2m-sharp-attn
# (configs/overopt-t2-lr3e-4.toml): the encoder's H_last at unit RMS (`r2m.query_norm = "unit-rms"`)
# and W_q, W_k drawn with std QK_STD (`r2m.qk_init_std`, default here 0.05). docs/results.md quotes it.
#
#   scripts/attention-at-init.sh [PAIRS.jsonl] [N]     # default: the overopt-t1 grid's held-out pairs, 4
#   QK_STD=0.1 scripts/attention-at-init.sh           # another qk_init_std
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-archive/overopt-t1/shared/pairs-test.jsonl}
n=${2:-4}
py=${R2M_HOME:-$HOME/.cache/r2m}/venv/bin/python
r2m=${R2M_BIN:-target/release/r2m}
export LIBTORCH=${LIBTORCH:-$(readlink -f .libtorch)}
export LD_LIBRARY_PATH=$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$pairs" "$n" > "$tmp/texts" <<'EOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    for i, line in enumerate(f):
        if i >= n:
            break
        r = json.loads(line)
        text = lambda t: t if isinstance(t, str) else "\n".join(m["content"] for m in t)
        print(json.dumps(text(r["prompt"]) + " " + text(r["chosen"])))
EOF
i=0
while read -r t; do
    "$r2m" forward --model smollm2-135m-instruct --text "$("$py" -c 'import json,sys; print(json.loads(sys.argv[1]))' "$t")" \
        --out "$tmp/h$i.safetensors" > /dev/null 2> "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    i=$((i + 1))
done < "$tmp/texts"
"$py" - "$tmp" "$i" <<'EOF'
import math, os, sys, torch
from safetensors.torch import load_file
tmp, n = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
d, std = 512, 0.02          # configs/overopt-t1.toml's r2m.d; docs/method.md's init
qk = float(os.environ.get("QK_STD", "0.05"))
def attention(q, k):
    logits = q @ k.T / math.sqrt(d)
    a = torch.softmax(logits, -1)
    return float(-(a * a.clamp_min(1e-30).log()).sum() / math.log(k.shape[0])), float(logits.std())
print(f"tokens | |h_t| median (min-max) | decoder H_last: |.|, logit std, entropy | unit-norm H_last: logit std, entropy | unit-RMS H_last, qk std {qk}: logit std, entropy")
for i in range(n):
    h = load_file(f"{tmp}/h{i}.safetensors")["hidden_states"][-1]   # (S, 576), after the final norm
    norms = h.norm(dim=-1)
    w_k = torch.randn(d, h.shape[1]) * std
    k = h @ w_k.T
    dec = h[-1]
    e_dec = attention(dec @ (torch.randn(d, h.shape[1]) * std).T, k)
    u = torch.randn(384)
    e_enc = attention((u / u.norm()) @ (torch.randn(d, 384) * std).T, k)
    k_qk = h @ (torch.randn(d, h.shape[1]) * qk).T
    e_sw = attention((u / u.square().mean().sqrt()) @ (torch.randn(d, 384) * qk).T, k_qk)
    print(f"{h.shape[0]} | {norms.median():.1f} ({norms.min():.1f}-{norms.max():.1f}) | "
          f"{dec.norm():.1f}, {e_dec[1]:.3f}, {e_dec[0]:.4f} | {e_enc[1]:.4f}, {e_enc[0]:.6f} | {e_sw[1]:.3f}, {e_sw[0]:.4f}")
EOF
