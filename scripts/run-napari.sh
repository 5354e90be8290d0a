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

# Say plainly whether SAM has real weights to run with.
"$PY" - <<'PYEOF'
from src_core.checkpoints import CHECKPOINTS, cached_checkpoint, checkpoint_path

found = cached_checkpoint("vit_b")
if found is not None:
    print(f"napari-sam: official SAM checkpoint vit_b is cached: {found}")
else:
    info = CHECKPOINTS["vit_b"]
    print(
        "napari-sam: NO official SAM checkpoint is cached, so nothing can be\n"
        "segmented yet (napari-sam never runs random weights). To get one\n"
        f"({info.size / 1e6:.0f} MB), run:\n"
        "    .venv/bin/napari-sam download vit_b\n"
        "(or `napari-sam download vit_b` with .venv activated), or download\n"
        f"    {info.url}\n"
        "yourself and put the file at\n"
        f"    {checkpoint_path('vit_b')}\n"
        "(set NAPARI_SAM_CACHE to use another cache folder)."
    )
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
viewer.open_sample("napari-sam", sample)
widgets = manifest.contributions.widgets or []
if widgets:
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", widgets[0].display_name)
    from src_core.checkpoints import cached_checkpoint

    viewer.reset_view()
    if cached_checkpoint("vit_b") is not None and hasattr(widget, "load_model"):
        widget.load_model()  # cached official weights: no download, start right away
else:
    print("napari-sam: this version has no Segment Anything widget yet; "
          "only the sample data is available.")
napari.run()
PYEOF
