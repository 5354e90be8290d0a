#!/usr/bin/env bash
# Check the system libraries (scripts/system-deps.sh), then create or refresh
# the project's virtualenv (.venv) and install napari-sam
# into it in editable mode with its test and text extras (plus open_clip,
# without its dependencies).
#
# Idempotent: when pyproject.toml, constraints.txt and this script are
# unchanged since the last successful run (a stamp in .venv records their
# hash) and the install is still there, it does nothing.
# torch is installed first, pinned by constraints.txt, so that resolving
# napari-sam's dependencies never pulls a different (CUDA) torch build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# System libraries first (Qt's xcb plugin, OpenGL, Xvfb): installed where this
# user can, else it stops here with the exact command to run.
"$ROOT/scripts/system-deps.sh"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.napari-sam-setup.stamp"

TORCH_PIN="$(grep -E '^torch==' constraints.txt | head -n 1 | tr -d '[:space:]')"
if [[ -z "$TORCH_PIN" ]]; then
    echo "setup-env: constraints.txt has no 'torch==VERSION' line" >&2
    exit 1
fi

if [[ ! -x "$PY" ]]; then
    echo "setup-env: creating $VENV" >&2
    python3 -m venv "$VENV"
fi

want="$(cat pyproject.toml constraints.txt scripts/setup-env.sh | sha256sum | cut -d ' ' -f 1)"

installed_ok() {
    # Cheap check (package metadata only, no torch import).
    "$PY" - "${TORCH_PIN#torch==}" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
torch = version("torch")
version("napari-sam")
version("open_clip_torch")
version("sam2")
sys.exit(0 if torch.split("+")[0] == sys.argv[1] else 1)
PYEOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && installed_ok; then
    exit 0
fi

echo "setup-env: installing $TORCH_PIN, then napari-sam (editable) with test and text extras into $VENV" >&2
pip_install=("$PY" -m pip install --quiet --progress-bar off --disable-pip-version-check)
"${pip_install[@]}" -c constraints.txt "$TORCH_PIN"
"${pip_install[@]}" -c constraints.txt -e ".[test,text]"
# open_clip (text prompts) without its dependencies: they would replace torch with
# another build and add torchvision; its real imports are ftfy and regex (the
# "text" extra) and tqdm. Pinned here, as it is not part of the "text" extra.
"${pip_install[@]}" -c constraints.txt --no-deps "open_clip_torch==3.3.0"
# Meta's sam2 (test-only, for the SAM 2.1 parity tests), from its source
# distribution without its CUDA extension and without its dependencies (they
# would replace torch and add torchvision; the tests carry a torchvision stand-in).
SAM2_BUILD_CUDA=0 "${pip_install[@]}" -c constraints.txt --no-deps --no-build-isolation "sam2==1.1.0"
# MobileSAM's code (test-only, TinyViT parity); its timm imports use tests/_timm_standin
# (timm itself needs torchvision).
"${pip_install[@]}" -c constraints.txt --no-deps "mobilesam-mirror==1.0.0"

if ! installed_ok; then
    echo "setup-env: after installing, torch is not ${TORCH_PIN#torch==} or napari-sam is missing" >&2
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|napari-sam) ' >&2 || true
    exit 1
fi
echo "$want" > "$STAMP"
"$PY" - <<'PYEOF' >&2
from importlib.metadata import version
print(f"setup-env: ready: torch {version('torch')}, napari {version('napari')}, "
      f"napari-sam {version('napari-sam')} (editable)")
PYEOF
