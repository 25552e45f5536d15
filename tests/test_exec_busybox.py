"""A real program: Debian's busybox-static:i386 under lguest exec, compared
with the same binary run natively (stdout and exit status; dd's output file
through --export).

`.ci/fetch-busybox` puts it in .cache/busybox-i386 (or set LGUEST_BUSYBOX).
Without it these tests skip and say so; with LGUEST_REQUIRE_BUSYBOX=1 (CI)
its absence fails them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lgtest import busybox_path, guest_kernel_or_skip

from lguest.guestos.runner import run_program

pytest.importorskip("unicorn")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def busybox() -> Path:
    p = busybox_path()
    if p is None:
        msg = ("busybox-static:i386 is absent: run .ci/fetch-busybox (Debian's package via apt-get download) "
               "or set LGUEST_BUSYBOX to a static i386 busybox")
        if os.environ.get("LGUEST_REQUIRE_BUSYBOX"):
            pytest.fail(msg + " -- LGUEST_REQUIRE_BUSYBOX is set, so this is a failure")
        pytest.skip(msg)
    guest_kernel_or_skip()
    return p


def make_root(base: Path, busybox: Path) -> Path:
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    # deterministic data: 1 MiB for the hashes, 50,000 bytes for dd
    block = hashlib.sha256(b"lguest").digest() * 32
    (root / "data.bin").write_bytes(block * (1 << 20 // len(block)))
    (root / "in.bin").write_bytes((block * 50)[:50_000])
    (root / "text.txt").write_bytes(b"one two three\nfour five\n\nsix\n")
    return root


CASES = {
    "echo": ["echo", "hello,", "world"],
    "sha256sum": ["sha256sum", "data.bin"],
    "md5sum": ["md5sum", "data.bin", "text.txt"],
    "wc": ["wc", "text.txt", "data.bin"],
    "seq": ["seq", "1", "2000"],
    "dd": ["dd", "if=in.bin", "of=out.bin", "bs=1", "count=5000"],
    "cat-missing": ["cat", "no-such-file"],
    "false": ["false"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_busybox_matches_native(case: str, busybox: Path, tmp_path: Path) -> None:
    args = CASES[case]
    root = make_root(tmp_path / "g", busybox)
    export = tmp_path / "export"
    result = run_program("/bin/busybox", args, root=root, export=export, timeout=120)
    assert result.message is None, result.message
    assert not result.unsupported, f"unsupported system calls: {result.unsupported}"
    nroot = make_root(tmp_path / "n", busybox)
    try:
        nat = subprocess.run([str(nroot / "bin" / "busybox"), *args], cwd=nroot, capture_output=True, timeout=120)
    except OSError as exc:
        pytest.skip(f"this host does not run i386 programs natively ({exc}): compared nothing")
    assert result.stdout == nat.stdout
    assert result.status == nat.returncode
    if case == "cat-missing":
        assert result.stderr == nat.stderr == b"cat: can't open 'no-such-file': No such file or directory\n"
        assert result.status == 1
    if case == "dd":
        want = (root / "in.bin").read_bytes()[:5000]
        assert (export / "out.bin").read_bytes() == (nroot / "out.bin").read_bytes() == want
        assert result.syscalls["read"] >= 5000 and result.syscalls["write"] >= 5000
        assert result.stats["direct_0x80"] >= 10_000  # every system call a direct trap


def test_busybox_sha256sum_cli(busybox: Path, tmp_path: Path) -> None:
    """The issue's "done when": lguest exec -- /bin/busybox sha256sum data.bin prints what the native run prints."""
    root = make_root(tmp_path, busybox)
    cmd = [sys.executable, "-m", "lguest", "exec", "--root", str(root), "--", "/bin/busybox", "sha256sum", "data.bin"]
    p = subprocess.run(cmd, capture_output=True, timeout=120, cwd=REPO)
    nat = subprocess.run([str(root / "bin" / "busybox"), "sha256sum", "data.bin"], cwd=root, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == nat.stdout
