"""The guest kernel's block counts.  Its read/write fast path (entry.S): a program that copies
a file a byte at a time, as `dd bs=1` does, costs a handful of guest blocks
per system call, and gets the same bytes as through the C path.

Every guest block costs the native block hook and a trip through Unicorn's
dispatch; the C path took ~24 blocks per read or write (twenty conditional
branches, a call and a ret), the fast path 4-5.  The count is exact for a
given kernel (virtual time, no randomness), so the bound here is a count,
not a time.  Its edges (every check on either side) are
tests/exec_progs/rwfast.c, compared with Linux in test_exec.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lgtest import build_i386, guest_kernel_or_skip

from lguest.guestos.runner import run_program

pytest.importorskip("unicorn")

# in.bin to out.bin a byte at a time (then one more read, at the end), and
# exit with the count modulo 256; block counts are compared between two sizes.
COPY = r"""
static int sys3(int n, int a, int b, int c)
{
    int r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}
void _start(void)
{
    char c;
    int in = sys3(5, (int)"in.bin", 0, 0), out = sys3(5, (int)"out.bin", 0101, 0644), n = 0;
    while (sys3(3, in, (int)&c, 1) == 1) { sys3(4, out, (int)&c, 1); n++; }
    sys3(252, n & 255, 0, 0);
    for (;;) ;
}
"""


@pytest.fixture(scope="module")
def copier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    guest_kernel_or_skip()
    out = tmp_path_factory.mktemp("fastpath")
    (out / "copy.c").write_text(COPY)
    return build_i386(out / "copy.c", out / "copy", "-O2")


def _copy(copier: Path, tmp_path: Path, data: bytes, core: object) -> int:
    root = tmp_path / f"root{len(data)}"
    root.mkdir()
    (root / "copy").write_bytes(copier.read_bytes())
    (root / "copy").chmod(0o755)
    (root / "in.bin").write_bytes(data)
    export = tmp_path / f"export{len(data)}"
    result = run_program("/copy", root=root, export=export, core=core, timeout=60, memory=32 << 20)
    assert result.message is None, result.message
    assert result.status == len(data) & 255
    assert (export / "out.bin").read_bytes() == data
    assert result.syscalls["read"] == len(data) + 1 and result.syscalls["write"] == len(data)
    return int(result.stats["blocks"])


def test_byte_at_a_time_copy_is_a_few_blocks_per_call(copier: Path, tmp_path: Path, core: object) -> None:
    data = bytes((i * 7 + 3) & 255 for i in range(5000))
    # past a first page of capacity (4 KiB): the file grows through the C path midway
    small = _copy(copier, tmp_path, data[:2500], core)
    large = _copy(copier, tmp_path, data, core)
    per_pair = (large - small) / 2500  # one read and one write, and the program's loop around them
    # The kernel's share was ~48 blocks a pair before the fast path; the
    # program's own loop is ~4.
    assert per_pair < 16, per_pair


EXIT0 = r"""
void _start(void) { __asm__ volatile("int $0x80" :: "a"(1), "b"(0)); for (;;) ; }
"""


@pytest.mark.parametrize("memory_mib", [32, 128, 512])
def test_boot_is_a_few_thousand_blocks(tmp_path: Path, core: object, memory_mib: int) -> None:
    """The kernel's boot, for a program that exits at once: its page
    allocator takes never-used pages as zero without reading them (it read
    each, 128 blocks a page), its page tables for all RAM are filled 32
    entries a block (was 9,190 / 15,598 / 41,230 blocks at 32 / 128 / 512
    MiB), and it leaves the emulator for the host a few times only."""
    guest_kernel_or_skip()
    (tmp_path / "exit0.c").write_text(EXIT0)
    exe = build_i386(tmp_path / "exit0.c", tmp_path / "exit0")
    result = run_program(str(exe), memory=memory_mib << 20, core=core, timeout=60)
    assert (result.status, result.message) == (0, None)
    # ~2,600-3,500 blocks at 32 MiB (a deeper path is more directories to make), plus the page
    # tables: 32 blocks per 4 MiB of RAM
    assert result.stats["blocks"] < 4500 + 40 * memory_mib // 4, result.stats["blocks"]
    # Entries into the guest (each a return to Python): one vmcall site to
    # patch (the kernel had eleven, each an exit) and the IDT's 18 gates
    # queued in the async ring, run at one exit.  Was 33.
    assert result.stats["hypercall_6"] == 18 and result.stats["exits_invalid"] == 1
    assert result.stats["entries"] <= 8, result.stats["entries"]
