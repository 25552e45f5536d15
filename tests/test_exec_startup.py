"""`lguest exec`'s start-up: what a plain run imports, and the helpers that
stand in for the standard library's slower modules on that path.

Issue 13 times whole `lguest exec` runs against Qiling, start-up included, so
a module a plain run does not use must not be imported by it: logging (only
a busy vector logs), json/zlib/hashlib (record and replay), subprocess and
tempfile (building the guest kernel), socket (`lguest run`'s signal watcher).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lgtest import build_i386, guest_kernel_or_skip

from lguest.cli.common import _terminal_size
from lguest.guestos.build import _sha256, source_hash

pytest.importorskip("unicorn")

#: Modules a plain `lguest exec` run must leave unimported (see the docstring).
LAZY = ("logging", "json", "hashlib", "_hashlib", "subprocess", "socket", "lguest.host.record",
        "lguest.cli.run", "lguest.cli.signals", "lguest.cli.vectors")

EXIT0 = r"""
void _start(void) { __asm__ volatile("int $0x80" :: "a"(1), "b"(0)); for (;;) ; }
"""


@pytest.fixture(scope="module")
def exit0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    guest_kernel_or_skip()
    out = tmp_path_factory.mktemp("startup")
    src = out / "exit0.c"
    src.write_text(EXIT0)
    return build_i386(src, out / "exit0")


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_plain_exec_imports_nothing_it_does_not_use(exit0: Path, pure: bool) -> None:
    code = ("import sys\nfrom lguest.cli import main\n"
            f"rc = main(['exec', '--', {str(exit0)!r}])\n"
            f"print([m for m in {LAZY!r} if m in sys.modules])\nsys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if k != "LGUEST_PURE_PYTHON"}
    if pure:
        env["LGUEST_PURE_PYTHON"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().replace("'", '"')) == []


def test_record_still_finds_its_modules(exit0: Path, tmp_path: Path) -> None:
    """The lazily imported record path works from a fresh interpreter (record, then replay)."""
    rec = tmp_path / "run.rec"
    for opt in ("--record", "--replay"):
        proc = subprocess.run([sys.executable, "-m", "lguest", "exec", opt, str(rec), "--", str(exit0)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "replay identical to the recording" in proc.stderr


@pytest.mark.parametrize("env", [{}, {"COLUMNS": "132"}, {"LINES": "50"}, {"COLUMNS": "100", "LINES": "40"},
                                 {"COLUMNS": "x", "LINES": "-3"}, {"COLUMNS": "0", "LINES": "0"}])
def test_terminal_size_is_shutils(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ("COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    want = shutil.get_terminal_size((80, 24))
    assert _terminal_size() == (want.lines, want.columns)


def test_kernel_hash_is_hashlibs() -> None:
    """The interpreter's own SHA-256 stands in for hashlib's: the same digest,
    so packaged stamps and cache directories stay valid."""
    import hashlib

    data = os.urandom(5000)
    h = _sha256()
    h.update(data)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(source_hash()) == 16


def test_busy_vector_logs_through_a_null_handler() -> None:
    """The library's NullHandler is attached where the logger is first used."""
    from lguest.host.vectors import _log

    log = _log()
    assert log is logging.getLogger("lguest")
    assert sum(isinstance(h, logging.NullHandler) for h in log.handlers) == 1
    _log()
    assert sum(isinstance(h, logging.NullHandler) for h in log.handlers) == 1


def test_command_line_start_up_pauses_the_collector_until_the_command_runs(exit0: Path) -> None:
    """`lguest` (argv[0]) imports with gc off; exec turns it back on before the guest runs."""
    code = ("import sys\nsys.argv = ['lguest']\nimport gc\nimport lguest\nprint(gc.isenabled())\n"
            "from lguest.cli import main\n"
            "import lguest.guestos.runner as r\norig = r.run_program\n"
            "def spy(*a, **k):\n    print(gc.isenabled())\n    return orig(*a, **k)\n"
            "r.run_program = spy\n"
            f"main(['exec', '--', {str(exit0)!r}])\nprint('not reached: exec leaves at once')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.stdout, proc.returncode) == ("False\nTrue\n", 0), proc.stdout + proc.stderr


def test_library_import_leaves_the_collector_alone() -> None:
    proc = subprocess.run([sys.executable, "-c", "import gc, lguest, lguest.cli; print(gc.isenabled())"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr


def test_exec_leaves_without_teardown_but_says_everything(exit0: Path, tmp_path: Path) -> None:
    """`lguest exec` ends with os._exit (lguest._startup.leave): its status, its
    --stats on stderr and its --export tree all get out first, with stdout a
    pipe (block-buffered) as in a benchmark."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "exit0").write_bytes(exit0.read_bytes())
    (root / "exit0").chmod(0o755)
    export = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "lguest", "exec", "--stats", "--root", str(root),
                           "--export", str(export), "--", "/exit0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("lguest: ") and proc.stderr.rstrip().endswith("interrupts                        0")
    assert "exit                              1" in proc.stderr
    assert (export / "exit0").read_bytes() == exit0.read_bytes()
    code = ("import sys\nfrom lguest import _startup\nprint('buffered', end='')\nsys.stderr.write('err')\n"
            "_startup.leave(7)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "buffered", "err")


def test_leaving_run_gives_the_same_result(exit0: Path) -> None:
    """run_program(_leaving=True), the command line's (the process ends next):
    torn down after all when the run raises; else the same result, the
    launcher left entered.  The process then ends at once, as the command's
    does: a launcher left entered, then collected while a later run writes
    a timeline, crashes in uc_mem_unmap (a bug of its own, not this path's)."""
    code = f"""
import os, sys
from lguest.guestos.runner import run_program
import lguest.unicorn.launcher as L
left = []
orig = L.UnicornLauncher._teardown
L.UnicornLauncher._teardown = lambda self: (left.append(1), orig(self))[1]
a = run_program({str(exit0)!r})
try:  # the timeline cannot be written: an exception out of the with block
    run_program({str(exit0)!r}, trace_out="/nonexistent/dir/t.json", _leaving=True)
except OSError:
    pass
n = len(left)
b = run_program({str(exit0)!r}, _leaving=True)
print(n, len(left), (a.status, a.syscalls, a.stats["blocks"]) == (b.status, b.syscalls, b.stats["blocks"]))
sys.stdout.flush()
os._exit(0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 2 True", proc.stdout + proc.stderr
