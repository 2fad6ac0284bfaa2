#!/usr/bin/env bash
# Build the separate environment in which the official reference code runs, and obtain that code at the
# pinned commits. Nothing here touches the project's own virtual environment.
#
# Usage: scripts/parity/setup_env.sh [ROOT]            (ROOT defaults to /tmp/vfmvae-parity)
# Result:
#   ROOT/venv             Python venv: torch 2.14.1 (run on CPU), transformers 4.50.1, setuptools<81, timm 1.0.31,
#                         torchmetrics 1.9.0 (official SSIM loss), ...
#   ROOT/pylib_timm1012   timm 1.0.12 alone (pip --target), put first on PYTHONPATH for LightningDiT
#   ROOT/src/<name>       official sources: VFM-VAE, LightningDiT, REG, REPA, platonic-rep (git clone + checkout)
# Environment:
#   PYTHON              interpreter for the venv (default python3.11; the reference data were made with 3.11.7)
#   PARITY_GIT_MIRROR   optional folder of bare mirrors (<owner>+<name>/repo), exported from instead of GitHub
#   PIP_ARGS            extra arguments for every pip install (e.g. an index URL for CPU-only torch wheels)
set -euo pipefail

ROOT="${1:-/tmp/vfmvae-parity}"
PYTHON="${PYTHON:-python3.11}"
PIP_ARGS="${PIP_ARGS:-}"
mkdir -p "$ROOT/src"

# owner/name  commit  folder
SOURCES=(
  "tianciB/VFM-VAE         b3a752a3f73a292f8f59a5f178e5de69575db6c4 VFM-VAE"
  "hustvl/LightningDiT     2725fed42a14898744433809949834e26957bcdd LightningDiT"
  "Martinser/REG           021ea2e50c38c5803bd9afff16316958a01fbd1d REG"
  "sihyun-yu/REPA          67f714503e3892f993844aab088ffc5791c92613 REPA"
  "minyoungg/platonic-rep  dcd76ba3c950c1b197a2ae8b1c6713535c94ecf9 platonic-rep"
)

# A bare mirror may lack some large blobs (e.g. VFM-VAE's ImageNet index .pkl files, which no script here
# reads). From a mirror we therefore check out every file whose blob is present, through a throw-away index
# (the mirror itself is only read).
export_from_mirror() {  # git_dir commit dest
  local git_dir="$1" commit="$2" dest="$3" index
  mkdir -p "$dest"
  index="$(mktemp)"
  (
    export GIT_DIR="$git_dir" GIT_INDEX_FILE="$index" GIT_WORK_TREE="$dest"
    git read-tree "$commit"
    git ls-tree -r "$commit" | awk '$2 == "blob" {print $3}' | git cat-file --batch-check \
      | awk '$2 == "missing" {print $1}' > "$dest/.missing_blobs"
    git ls-files --stage | awk 'NR == FNR {missing[$1]; next} ($2 in missing) {sub(/^[^\t]*\t/, ""); print}' \
      "$dest/.missing_blobs" - | xargs -r git update-index --force-remove
    git checkout-index --all
  )
  rm -f "$index"
  echo "$commit" > "$dest/.parity_commit"
}

for entry in "${SOURCES[@]}"; do
  read -r repo commit folder <<<"$entry"
  dest="$ROOT/src/$folder"
  if [[ -n "${PARITY_GIT_MIRROR:-}" ]]; then
    [[ -f "$dest/.parity_commit" ]] || export_from_mirror "$PARITY_GIT_MIRROR/${repo/\//+}/repo" "$commit" "$dest"
    echo "$repo @ $(cat "$dest/.parity_commit") -> $dest" \
      "(from mirror; missing blobs: $(wc -l < "$dest/.missing_blobs"))"
    continue
  fi
  [[ -d "$dest/.git" ]] || git clone --quiet "https://github.com/$repo.git" "$dest"
  git -C "$dest" checkout --quiet "$commit"
  echo "$repo @ $(git -C "$dest" rev-parse --short HEAD) -> $dest"
done

if [[ ! -x "$ROOT/venv/bin/python" ]]; then
  "$PYTHON" -m venv "$ROOT/venv"
fi
PIP="$ROOT/venv/bin/python -m pip"
# torch first, so that nothing later pulls in a different build.
# shellcheck disable=SC2086
$PIP install --quiet $PIP_ARGS torch==2.14.1 torchvision==0.29.1
# VFM-VAE pins transformers 4.50.1 and imports pkg_resources (gone from setuptools 81).
# shellcheck disable=SC2086
$PIP install --quiet $PIP_ARGS "transformers==4.50.1" "setuptools<81" timm==1.0.31 numpy==2.4.6 scipy==1.17.1 \
  einops==0.8.2 safetensors==0.8.0 pyyaml torchmetrics==1.9.0 lightning-utilities==0.15.3
# LightningDiT's transport/integrators.py imports torchdiffeq; --no-deps keeps torch as installed above.
# shellcheck disable=SC2086
$PIP install --quiet $PIP_ARGS --no-deps torchdiffeq==0.2.5
# LightningDiT pins timm 1.0.12; keep it beside the venv, not in it (REG/VFM-VAE ran with 1.0.31).
# shellcheck disable=SC2086
$PIP install --quiet $PIP_ARGS --no-deps --target "$ROOT/pylib_timm1012" timm==1.0.12

"$ROOT/venv/bin/python" - <<'PY'
import importlib
for name in ("torch", "torchvision", "transformers", "timm", "numpy", "scipy", "safetensors", "torchdiffeq",
             "torchmetrics"):
    print(f"{name} {importlib.import_module(name).__version__}")
PY
echo "environment ready: $ROOT"
