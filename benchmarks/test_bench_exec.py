"""lguest exec on busybox: the workloads of benchmarks/exec_vs_qiling.py,
in-process (no interpreter start-up), one run per round.

    .venv/bin/python -m pytest benchmarks/test_bench_exec.py --benchmark-only

The three-way comparison with Qiling and the native run (whole runs, outputs
checked identical) is the script: python benchmarks/exec_vs_qiling.py.
The smoke run (--benchmark-disable) uses small counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("unicorn")

import busybox_path  # noqa: E402

from lguest.guestos import KernelUnavailable, kernel_path, run_program  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bb = busybox_path.default()
    if not bb.is_file():
        pytest.skip("busybox-static:i386 is absent: run .ci/fetch-busybox")
    try:
        kernel_path()
    except KernelUnavailable as exc:
        pytest.skip(str(exc))
    r = tmp_path_factory.mktemp("bbroot")
    (r / "bin").mkdir()
    (r / "bin" / "busybox").write_bytes(bb.read_bytes())
    (r / "data.bin").write_bytes(bytes(range(256)) * 4096)
    (r / "in.bin").write_bytes(bytes(range(256)) * 196)
    return r


@pytest.mark.parametrize("workload", ["dd", "sha256sum", "seq"])
def test_exec_busybox(benchmark, workload: str, root: Path) -> None:
    smoke = benchmark.disabled
    args = {
        "dd": ["dd", "if=/in.bin", "of=/out.bin", "bs=1", f"count={1000 if smoke else 50000}"],
        "sha256sum": ["sha256sum", "/data.bin"],
        "seq": ["seq", "1", str(1000 if smoke else 100000)],
    }[workload]
    result = benchmark.pedantic(run_program, args=("/bin/busybox", args), kwargs={"root": root},
                                rounds=1 if smoke else 3, iterations=1)
    assert result.status == 0, result.message
    assert not result.unsupported
