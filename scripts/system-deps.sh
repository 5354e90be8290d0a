#!/usr/bin/env bash
# The system libraries napari-sam's window and tests need on Linux: Qt's xcb
# platform plugin (PyQt6), napari's OpenGL canvas, and Xvfb for a virtual
# screen (tests, screenshots, `xvfb-run ./scripts/run-napari.sh`).
#
#   ./scripts/system-deps.sh          install what is missing (as root, or with sudo)
#   ./scripts/system-deps.sh --check  only say what is missing (exit 1 if anything is)
#
# The one list of these packages: setup-env.sh (so both README commands) and
# .ci/run call this script. On Debian/Ubuntu it installs the missing packages
# with apt-get when it runs as root or sudo works without a password; otherwise
# it stops with the exact command to run. Elsewhere (macOS, Windows, other
# Linux distributions) it does nothing: Qt's wheels bring what they need there,
# or the distribution's names differ (see README, "Installing").
# NAPARI_SAM_SKIP_SYSTEM_DEPS=1 skips it (for a machine set up by hand).
set -euo pipefail

PACKAGES=(
    xvfb xauth
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0
    libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0
    libegl1 libgl1 libgl1-mesa-dri libdbus-1-3 libfontconfig1
)

if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${PACKAGES[@]}"
    exit 0
fi
if [[ -n "${NAPARI_SAM_SKIP_SYSTEM_DEPS:-}" || "$(uname -s)" != "Linux" ]]; then
    exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-deps: not a Debian-based system; make sure Qt's xcb libraries (libxcb-cursor," \
        "libxcb-icccm, libxcb-keysyms, libxkbcommon-x11, libEGL, libGL) and Xvfb are installed" >&2
    exit 0
fi

missing=()
installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)"
for pkg in "${PACKAGES[@]}"; do
    grep -qE "^${pkg}(:[a-z0-9]+)? install ok installed$" <<<"$installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

command_line="apt-get install -y --no-install-recommends ${missing[*]}"
if [[ "${1:-}" == "--check" ]]; then
    echo "system-deps: missing ${missing[*]}; install them with: sudo apt-get update && sudo $command_line" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo)
    else
        echo "system-deps: napari needs these system libraries, which are not installed: ${missing[*]}" >&2
        echo "  Install them (as root or with sudo), then run this command again:" >&2
        echo "    sudo apt-get update && sudo $command_line" >&2
        exit 1
    fi
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
