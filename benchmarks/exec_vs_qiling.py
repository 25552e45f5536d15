"""lguest exec against its peer, Qiling 1.4.6, and the native run: Debian's
static i386 busybox on three workloads, whole runs (start-up included).

    python benchmarks/exec_vs_qiling.py [--busybox PATH] [--qiling-python PY] [--repeat N]

Qiling goes in a venv of its own (it pins its own dependencies):
``python3 -m venv /tmp/ql && /tmp/ql/bin/pip install 'qiling==1.4.6'``, then
``--qiling-python /tmp/ql/bin/python`` (or QILING_PYTHON).  Without it the
Qiling column is left out.  Every run's stdout -- and dd's output file: from
the rootfs for Qiling and native, through --export for lguest -- must be
identical across the three, else the script fails.

All three run as a user runs them: with byte-code caching on
(PYTHONDONTWRITEBYTECODE is dropped from the children's environment, and
lguest's own modules are byte-compiled first -- an editable install has no
``.pyc`` until a run writes them; a wheel's are written at install, as
Qiling's were), after one untimed warm-up round.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import busybox_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

WORKLOADS = {
    "dd": ["dd", "if=/in.bin", "of=/out.bin", "bs=1", "count=50000"],
    "sha256sum": ["sha256sum", "/data.bin"],
    "seq": ["seq", "1", "100000"],
}


def make_root(base: Path, busybox: Path) -> Path:
    root = base
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    block = hashlib.sha256(b"lguest").digest() * 32
    (root / "data.bin").write_bytes(block * ((1 << 20) // len(block)))
    (root / "in.bin").write_bytes((block * 50)[:50_000])
    out = root / "out.bin"
    if out.exists():
        out.unlink()
    return root


def native_cmd(root: Path, args: list[str]) -> list[str]:
    # native: absolute guest paths become paths under the root
    return [str(root / "bin" / "busybox"), *[a.replace("=/", f"={root}/") if "=/" in a else
                                             (str(root) + a if a.startswith("/") else a) for a in args]]


#: The children's environment: byte-code caching as a user has it.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], cwd: Path) -> tuple[float, bytes, int]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, env=ENV)
    return time.perf_counter() - t0, p.stdout, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    busybox_path.add_option(ap)
    ap.add_argument("--qiling-python", default=os.environ.get("QILING_PYTHON"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    opts = ap.parse_args()
    busybox = busybox_path.checked(opts.busybox)
    if busybox is None:
        return 2
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
          f"Linux {platform.release()}, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'workload':<10} {'native s':>9} {'lguest s':>9} {'qiling s':>9} {'qiling/lguest':>14} "
          f"{'lguest/native':>14}  syscalls")
    failed = False
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "lguest")], check=True, env=ENV)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name in opts.only or list(WORKLOADS):
            args = WORKLOADS[name]
            times: dict[str, list[float]] = {"native": [], "lguest": [], "qiling": []}
            outputs: dict[str, tuple[bytes, bytes | None]] = {}
            syscalls = ""
            for _ in range(opts.repeat + 1):  # the first round is an untimed warm-up
                root = make_root(base / "native", busybox)
                t, out, rc = timed(native_cmd(root, args), root)
                times["native"].append(t)
                outputs["native"] = (out.replace(str(root).encode(), b""), _maybe(root / "out.bin"))

                root = make_root(base / "lguest", busybox)
                export = base / "lguest-export"
                shutil.rmtree(export, ignore_errors=True)
                cmd = [sys.executable, "-m", "lguest", "exec", "--root", str(root), "--export", str(export),
                       "--stats", "--", "/bin/busybox", *args]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, cwd=REPO, capture_output=True, env=ENV)
                times["lguest"].append(time.perf_counter() - t0)
                outputs["lguest"] = (p.stdout, _maybe(export / "out.bin"))
                syscalls = _syscall_summary(p.stderr.decode())

                if opts.qiling_python:
                    root = make_root(base / "qiling", busybox)
                    cmd = [opts.qiling_python, str(HERE / "qiling_run.py"), str(root), "/bin/busybox", *args]
                    t, out, rc = timed(cmd, root)
                    times["qiling"].append(t)
                    outputs["qiling"] = (out, _maybe(root / "out.bin"))
            ref = outputs["native"]
            for who, got in outputs.items():
                if got != ref:
                    print(f"  {name}: {who}'s output differs from the native run's", file=sys.stderr)
                    failed = True
            med = {k: statistics.median(v[1:]) for k, v in times.items() if v}
            q, lg, nat = med.get("qiling"), med["lguest"], med["native"]
            q_s = f"{q:.3f}" if q else "-"
            ratio = f"{q / lg:.1f}x" if q else "-"
            print(f"{name:<10} {nat:>9.3f} {lg:>9.3f} {q_s:>9} {ratio:>14} {lg / nat:>13.0f}x  {syscalls}")
    return 1 if failed else 0


def _maybe(p: Path) -> bytes | None:
    return p.read_bytes() if p.exists() else None


def _syscall_summary(stats: str) -> str:
    total = 0
    for line in stats.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("interrupts", "hypercalls"):
            total += int(parts[1])
        if line.startswith("direct traps"):
            break
    return f"{total} system calls"


if __name__ == "__main__":
    sys.exit(main())
