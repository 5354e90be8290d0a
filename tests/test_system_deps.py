"""scripts/system-deps.sh: the system libraries both README commands and CI install or ask for.

Driven with stand-ins for dpkg-query, id, sudo and apt-get on PATH, so the
three situations a user meets (all there; missing as root; missing without
root or sudo) run here without touching the machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system-deps.sh"
# What Qt's xcb plugin needed on a fresh Debian machine beyond libxcb-cursor0 (issue 28).
QT_XCB = {"libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxkbcommon-x11-0", "xvfb"}


def _packages() -> list[str]:
    out = subprocess.run([str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    return out.split()


def _shims(tmp_path: Path, installed: list[str], uid: int, sudo_ok: bool) -> dict:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "apt.log"
    status = "".join(f"{p} install ok installed\\n" for p in installed)
    scripts = {
        "dpkg-query": f'#!/bin/sh\nprintf "{status}"\n',
        "id": f"#!/bin/sh\necho {uid}\n",
        "sudo": ('#!/bin/sh\nif [ "$1" = "-n" ]; then shift; ' + ("" if sudo_ok else "exit 1; ") +
                 'fi\necho sudo >> "%s"\nexec "$@"\n' % log),
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >> "{log}"\n',
    }
    for name, text in scripts.items():
        path = bin_ / name
        path.write_text(text)
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_SAM_SKIP_SYSTEM_DEPS"}
    env["PATH"] = f"{bin_}:{env['PATH']}"
    return {"env": env, "log": log}


def _run(shims: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=shims["env"])


pytestmark = pytest.mark.skipif(os.uname().sysname != "Linux", reason="Debian packages")


def test_the_list_holds_what_qt_xcb_needs():
    assert QT_XCB <= set(_packages())


def test_nothing_happens_when_everything_is_installed(tmp_path):
    shims = _shims(tmp_path, _packages(), uid=1000, sudo_ok=False)
    proc = _run(shims)
    assert proc.returncode == 0, proc.stderr
    assert not shims["log"].exists()


def test_root_installs_exactly_the_missing_packages(tmp_path):
    have = [p for p in _packages() if p not in ("libxcb-icccm4", "libxcb-keysyms1")]
    shims = _shims(tmp_path, have, uid=0, sudo_ok=False)
    proc = _run(shims)
    assert proc.returncode == 0, proc.stderr
    calls = shims["log"].read_text().splitlines()
    assert calls[-1].split()[-2:] == ["libxcb-icccm4", "libxcb-keysyms1"]
    assert "install" in calls[-1] and "sudo" not in calls


def test_a_user_with_passwordless_sudo_gets_them_through_sudo(tmp_path):
    shims = _shims(tmp_path, [p for p in _packages() if p != "xvfb"], uid=1000, sudo_ok=True)
    assert _run(shims).returncode == 0
    calls = shims["log"].read_text().splitlines()
    assert "sudo" in calls and calls[-1].endswith(" xvfb")


def test_without_root_or_sudo_it_stops_with_the_exact_command(tmp_path):
    shims = _shims(tmp_path, [p for p in _packages() if p != "libxcb-cursor0"], uid=1000, sudo_ok=False)
    proc = _run(shims)
    assert proc.returncode == 1
    assert "sudo apt-get install -y --no-install-recommends libxcb-cursor0" in proc.stderr
    assert not shims["log"].exists()
    check = _run(shims, "--check")
    assert check.returncode == 1 and "libxcb-cursor0" in check.stderr


@pytest.mark.parametrize("caller", [".ci/run", "scripts/setup-env.sh"])
def test_ci_and_the_readme_commands_go_through_it(caller):
    # run-napari.sh and test.sh (README's two commands) both start with setup-env.sh.
    assert "scripts/system-deps.sh" in (ROOT / caller).read_text()
    for command in ("scripts/run-napari.sh", "scripts/test.sh"):
        assert "scripts/setup-env.sh" in (ROOT / command).read_text()
