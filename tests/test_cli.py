"""The command line: ``rediff demo`` writes its pictures where it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rediff.cli import main


def test_demo_writes_pngs(tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["demo", "--out", str(out), "--seed", "3"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"forward_2d.png", "forward_digits.png", "log_snr.png", "samplers_2d.png"}
    for path in out.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert str(out) in printed.splitlines()[-1]


def test_module_entry_point_shows_help():
    result = subprocess.run(
        [sys.executable, "-m", "rediff", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
