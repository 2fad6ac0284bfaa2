#!/usr/bin/env bash
# Regenerate all five parity data sets into OUT and compare each with the committed copy in tests/data.
#
# Usage: scripts/parity/regenerate_all.sh [ROOT] [OUT]
#   ROOT  what setup_env.sh built (default /tmp/vfmvae-parity)
#   OUT   output folder, must not hold earlier results (default /tmp/vfmvae-parity-out)
# Each data set writes OUT/<name>/ and OUT/<name>.compare.txt (one line per tensor, then a summary line).
set -euo pipefail

ROOT="${1:-/tmp/vfmvae-parity}"
OUT="${2:-/tmp/vfmvae-parity-out}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="$(cd "$HERE/../.." && pwd)/tests/data"
PY="$ROOT/venv/bin/python"
SRC="$ROOT/src"
[[ -x "$PY" ]] || { echo "ROOT $ROOT: no venv/bin/python; run scripts/parity/setup_env.sh $ROOT first" >&2; exit 2; }
mkdir -p "$OUT"

run() {  # name, then the script's arguments
  local name="$1"; shift
  echo "== $name"
  "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 || { tail -n 20 "$OUT/$name.log"; exit 1; }
  "$PY" "$HERE/compare.py" "$OUT/$name" "$DATA/$name" > "$OUT/$name.compare.txt" || true
  tail -n 1 "$OUT/$name.compare.txt"
}

run official_tokenizer_tiny "$PY" "$HERE/make_official_tokenizer_tiny.py" --official "$SRC/VFM-VAE"
# reads the tiny generator of tests/data/official_tokenizer_tiny (the committed copy)
run official_tokenizer_steps "$PY" "$HERE/make_official_tokenizer_steps.py" --official "$SRC/VFM-VAE"
# LightningDiT pins timm 1.0.12: put it in front of the venv's timm for this script only.
run lightningdit_reference env PYTHONPATH="$ROOT/pylib_timm1012" \
  "$PY" "$HERE/make_lightningdit_reference.py" --official "$SRC/LightningDiT"
run reg_reference "$PY" "$HERE/make_reg_reference.py" --official "$SRC/REG" --vfm-vae "$SRC/VFM-VAE" --repa "$SRC/REPA"
run cknna_reference "$PY" "$HERE/make_cknna_reference.py" --official "$SRC/VFM-VAE" --platonic-rep "$SRC/platonic-rep"
echo "results in $OUT (*.compare.txt)"
