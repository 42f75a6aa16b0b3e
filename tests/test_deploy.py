"""The systemd units in deploy/: systemd accepts them, and their command lines are valid cxr-edge commands."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_edge.cli import cli

UNITS = sorted((Path(__file__).resolve().parent.parent / "deploy" / "systemd").glob("*.service"))
INSTALLED = "/opt/cxr-edge/.venv/bin/cxr-edge"


def exec_start(unit: Path) -> list[str]:
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_both_modes_and_the_status_page_have_a_unit() -> None:
    assert [exec_start(u)[1] for u in UNITS] == ["dicom-listen", "status-page", "watch"]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_accepts_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found (Debian's systemd package)"
    installed = Path(sys.executable).with_name("cxr-edge")
    assert installed.exists()
    local = tmp_path / unit.name
    local.write_text(unit.read_text().replace(INSTALLED, str(installed)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_command_line_parses_and_writes_where_allowed(unit: Path) -> None:
    program, *args = exec_start(unit)
    assert program == INSTALLED
    context = cli.make_context("cxr-edge", list(args), resilient_parsing=False)
    command = cli.get_command(context, args[0])
    assert command is not None
    options = command.make_context(args[0], args[1:]).params
    if args[0] == "status-page":  # it only reads, so it may write nowhere
        assert "ReadWritePaths=" not in unit.read_text() and "ProtectSystem=strict" in unit.read_text()
        assert options["host"] == "127.0.0.1"
        return
    writable = next(line for line in unit.read_text().splitlines() if line.startswith("ReadWritePaths="))
    allowed = writable.removeprefix("ReadWritePaths=").split()
    assert options["out_dir"] in allowed
    if args[0] == "watch":
        assert options["in_dir"] in allowed
