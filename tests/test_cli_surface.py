"""The rest of the user's surface: `lguest vectors --free/--json`, the
messages for missing compiled pieces, and the package metadata a user sees.
Each runs the real command or a fresh interpreter in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_py(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("LGUEST_SYSCALL_VECTOR", "LGUEST_PURE_PYTHON")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60)


def lguest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_py(f"import sys; from lguest.cli import main; sys.exit(main({list(args)!r}))", env=env)


# --- lguest vectors --free / --json -------------------------------------------------------------------
def test_free_lists_the_vectors_a_syscall_vector_may_take() -> None:
    out = lguest("vectors", "--free")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    # Exceptions (0x00-0x1f), IRQ-move cleanup (0x20), the legacy IRQs (0x30-0x3f) and the APIC/IPI
    # vectors are taken; 0x80 is Linux's own and counts as available.
    assert first.startswith("free for a syscall vector: 0x21-0x2f, 0x40-0xee, 0xf8-0xf9 ")
    assert "(192 vectors" in first


def test_json_gives_table_free_list_and_verdict() -> None:
    out = lguest("vectors", "--json", "--syscall-vector", "0x40")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"vector": 0x80, "owner": "Linux system call"} in doc["used"]
    assert 0x40 in doc["free"] and 0x31 not in doc["free"] and 0x80 in doc["free"]
    assert doc["syscall_vector"] == {"vector": 0x40, "available": True, "owner": None, "message": None}
    busy = lguest("vectors", "--json", "--syscall-vector", "0x31")
    assert busy.returncode == 1
    verdict = json.loads(busy.stdout)["syscall_vector"]
    assert verdict["available"] is False and verdict["owner"] == "per-CPU legacy IRQ 1"


# --- missing compiled pieces -----------------------------------------------------------------------------
def test_missing_core_warning_says_not_built_and_how_to_build() -> None:
    # sys.modules[name] = None makes that import fail as a missing extension does.
    out = run_py("import sys, warnings; sys.modules['lguest._core'] = None; "
                 "warnings.simplefilter('always'); import lguest; print(lguest.CORE)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"
    assert "compiled core (lguest._core) is not built" in out.stderr
    assert "pip install -e ." in out.stderr
    assert "circular import" not in out.stderr and "halted" not in out.stderr


def test_run_tells_missing_hooks_from_missing_unicorn(tmp_path: Path) -> None:
    pytest.importorskip("unicorn")
    image = tmp_path / "guest.elf"
    image.write_bytes(b"\x7fELF")
    out = run_py("import sys; sys.modules['lguest.unicorn._uchook'] = None; from lguest.cli import main; "
                 f"sys.exit(main(['run', {str(image)!r}]))")
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("lguest: the compiled Unicorn hooks (lguest.unicorn._uchook) are not built")
    assert "pip install -e ." in lines[0] and "lguest[unicorn]" not in lines[0]


# --- package metadata --------------------------------------------------------------------------------------
def test_license_file_is_the_gpl2_text() -> None:
    text = (ROOT / "LICENSE").read_text() if (ROOT / "LICENSE").exists() else None
    if text is None:
        pytest.skip("LICENSE is not shipped next to the tests here")
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text


def test_docs_never_leave_the_repository() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README is not shipped next to the tests here")
    import re

    for doc in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text and "shared/spec" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
