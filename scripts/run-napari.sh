#!/usr/bin/env bash
# Open napari with the napari-sam plugin and one of its sample images.
#   ./scripts/run-napari.sh [SAMPLE]
# SAMPLE is a key from napari.yaml: nuclei_2d (default), nuclei_3d,
# multichannel_16bit, cell or astronaut.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup-env.sh"
PY="$ROOT/.venv/bin/python"
SAMPLE="${1:-nuclei_2d}"

# Say plainly which model the widget starts with.
"$PY" - <<'PYEOF'
from src_core.checkpoints import EMBEDDED_MODEL, default_model_type

model = default_model_type()
if model == EMBEDDED_MODEL:
    print(
        f"napari-sam: no official SAM checkpoint is cached; using the built-in {model},\n"
        "a small offline model trained by napari-sam on synthetic images (not Meta's SAM).\n"
        "For the official model: .venv/bin/napari-sam download vit_b"
    )
else:
    print(f"napari-sam: using the cached official {model} checkpoint")
PYEOF

if [[ "$(uname -s)" == "Linux" && -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
    echo "run-napari: no display (DISPLAY is not set). napari needs a screen;" >&2
    echo "  on a headless machine try: xvfb-run -a ./scripts/run-napari.sh $SAMPLE" >&2
    exit 1
fi

exec "$PY" - "$SAMPLE" <<'PYEOF'
import sys

import napari
from npe2 import PluginManifest

sample = sys.argv[1]
manifest = PluginManifest.from_distribution("napari-sam")
keys = [s.key for s in manifest.contributions.sample_data or []]
if sample not in keys:
    sys.exit(f"run-napari: unknown sample {sample!r}; choose one of {', '.join(keys)}")

viewer = napari.Viewer(title="napari-sam")
viewer.window.resize(1500, 950)  # room for the image next to the dock widget
viewer.open_sample("napari-sam", sample)
widgets = manifest.contributions.widgets or []
if widgets:
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", widgets[0].display_name)
    viewer.reset_view()
    if hasattr(widget, "load_model"):
        widget.load_model()  # the built-in or a cached official model: no download
else:
    print("napari-sam: this version has no Segment Anything widget yet; "
          "only the sample data is available.")
from qtpy.QtCore import QTimer

QTimer.singleShot(300, viewer.reset_view)  # once the window has its final size: the whole image
napari.run()
PYEOF
