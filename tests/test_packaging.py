"""The built wheel holds the whole tree: installed into a fresh venv, every
module of the source tree imports from it (not from this checkout).

Slow (it compiles both extensions): not in the default run; ``.ci/run`` runs
it with ``pytest -m slow``.  No network: the wheel is built without build
isolation (this venv has Cython and setuptools) and installed with
``--no-index --no-deps``; numpy and Unicorn come from this venv's
site-packages on ``PYTHONPATH``, which holds no ``lguest`` of its own (the
checkout is installed in editable mode through a ``.pth`` file, which
``PYTHONPATH`` entries do not run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "lguest"


def source_modules() -> list[str]:
    """Every importable module of the source tree, by dotted name."""
    out = []
    for p in sorted(PKG.rglob("*")):
        if p.suffix not in (".py", ".pyx") or "build" in p.parts:
            continue
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":
            out.append(".".join(parts))
    return out


def shipped_files() -> list[str]:
    """What package-data must ship: declarations and headers beside the code."""
    return sorted(str(p.relative_to(ROOT)) for p in PKG.rglob("*")
                  if p.suffix in (".pyx", ".pxd", ".pyi", ".h") or p.name == "py.typed")


def clean_copy(dest: Path) -> Path:
    """The checkout's files as a fresh clone would have them (tracked, plus new
    files not ignored): no build/ directory whose stale contents a wheel
    would pick up, no compiled modules."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_the_wheel_installs_and_imports_every_module(tmp_path: Path) -> None:
    src = clean_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("lguest-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in shipped_files() if f not in names]
    assert not missing, f"not in the wheel: {missing}"

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    modules = source_modules()
    script = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "import lguest\n"
        "print(json.dumps({'core': lguest.CORE, 'files': files}))\n"
    )
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"], LGUEST_PURE_PYTHON="")
    run = subprocess.run([str(py), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["core"] == "cython"
    outside = {m: f for m, f in got["files"].items() if not f.startswith(str(env_dir))}
    assert not outside, f"imported from outside the fresh venv: {outside}"
    cli = subprocess.run([str(env_dir / "bin" / "lguest"), "vectors"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert cli.returncode == 0, cli.stderr[-2000:]


@pytest.mark.skipif(not PKG.is_dir(), reason="no lguest/ source tree next to the tests (an installed sdist)")
def test_every_package_is_found() -> None:
    # Packages are discovered, not listed: a new subpackage ships without
    # anyone editing pyproject.toml.
    from setuptools import find_packages

    found = set(find_packages(str(ROOT), include=["lguest", "lguest.*"]))
    have = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py") if "build" not in p.parts}
    assert have <= found and {"lguest", "lguest.host", "lguest.unicorn"} <= found
    text = (ROOT / "pyproject.toml").read_text()
    assert "packages = [" not in text, "a hand-kept package list"
