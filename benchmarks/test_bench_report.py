"""report.py (which regenerates docs/PERFORMANCE.md) must keep working: run it quick."""

from __future__ import annotations

import report


def test_report_quick(cbaseline, capsys):
    assert report.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| measurement | raw | ratio | target | |" in out
    assert out.count("**met**") + out.count("**not met**") == 7
