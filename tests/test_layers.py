"""The package's layers, and that imports only point down.

    top      lguest (the facade __init__), lguest.cli.*, lguest.__main__
    shims    lguest.run, lguest.launcher: old public paths, re-exports of lguest.host
    guestos  lguest.guestos.*: lguest exec (a guest kernel for real programs, on Unicorn)
    unicorn  lguest.unicorn.*, and its native hook lguest.unicorn._uchook
    host     lguest.host.*: the control plane
    core     everything else at lguest/ top: both cores (_core, fallback),
             cores, constants, messages, validate, memory, clock

Every module's imports are read from its source (``ast`` for Python, the
import lines of ``.pyx``), lazy ones inside functions included, and each
import of another lguest module must go to the same layer or one below.
Nothing inside the package imports a shim, and only the top imports the
facade ``lguest`` itself (``from . import Host`` in a lower module would
run the whole package's import and hide a cycle).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lguest"
# The sdist's own test run (.ci/sdist_check) tests the installed package with
# no source tree beside tests/: nothing for these checks to read there.
pytestmark = pytest.mark.skipif(not PKG.is_dir(), reason="no lguest/ source tree next to the tests")

LAYERS = ["core", "host", "unicorn", "guestos", "shims", "top"]
_SHIMS = {"lguest.run", "lguest.launcher"}
_TOP = {"lguest", "lguest.cli", "lguest.__main__"}


def layer_of(module: str) -> str:
    if module in _TOP or module.startswith("lguest.cli."):
        return "top"
    if module in _SHIMS:
        return "shims"
    if module.startswith("lguest.guestos"):
        return "guestos"
    if module.startswith("lguest.unicorn"):
        return "unicorn"
    if module.startswith("lguest.host"):
        return "host"
    return "core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (PKG.parent / module.replace(".", "/") / "__init__.py").exists()


def _exists(module: str) -> bool:
    base = PKG.parent / module.replace(".", "/")
    return _is_package(module) or any(base.with_suffix(s).exists() for s in (".py", ".pyx"))


def _resolve(importer: str, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target>`` inside ``importer``."""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path, me: str | None = None) -> set[str]:
    """The lguest modules ``path`` (module ``me``, by default the one at that
    path) imports: submodules where an imported name is one."""
    me = me or _module_name(path)
    found: set[str] = set()

    def add(module: str, names: list[str]) -> None:
        if module != "lguest" and not module.startswith("lguest."):
            return
        subs = [f"{module}.{n}" for n in names if _exists(f"{module}.{n}")]
        found.update(subs)
        if len(subs) < len(names) or not names:
            found.add(module)  # a name defined in the module itself (for "lguest": the facade)

    if path.suffix == ".pyx":
        for m in re.finditer(r"^\s*from\s+(\.*)([\w.]*)\s+c?import\s+([\w, ]+)", path.read_text(), re.M):
            dots, target, names = m.groups()
            module = _resolve(me, len(dots), target or None) if dots else target
            add(module, [n.split(" as ")[0].strip() for n in names.split(",")])
        for m in re.finditer(r"^\s*c?import\s+(lguest[\w.]*)", path.read_text(), re.M):
            add(m.group(1), [])
        return found
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(me, node.level, node.module) if node.level else (node.module or "")
            add(module, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, [])
    return found


SOURCES = sorted(p for p in PKG.rglob("*") if p.suffix in (".py", ".pyx") and "build" not in p.parts)


def test_every_module_has_a_layer() -> None:
    names = {_module_name(p) for p in SOURCES}
    assert {"lguest.cores", "lguest.host.run", "lguest.unicorn.launcher", "lguest._core"} <= names
    assert len(names) == len(SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_imports_point_down(path: Path) -> None:
    me = _module_name(path)
    mine = LAYERS.index(layer_of(me))
    wrong = sorted(m for m in imports_of(path) - {me} if LAYERS.index(layer_of(m)) > mine)
    assert not wrong, f"{me} ({layer_of(me)} layer) imports upward: {wrong}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_shims_and_the_facade_are_for_outside_code(path: Path) -> None:
    me = _module_name(path)
    if me in _TOP or me.startswith("lguest.cli."):
        return
    used = imports_of(path) & (_SHIMS | {"lguest"})
    assert not used, f"{me} imports {sorted(used)}: import the module that defines the name"


def test_the_checker_sees_upward_imports(tmp_path: Path) -> None:
    # What the old tree did: the cores' Cpu.run importing the run loop lazily,
    # and the backend importing names from the facade.
    core = tmp_path / "fallback.py"
    core.write_text("def run(cpu, backend):\n    from .host.run import run_guest\n    return run_guest(cpu, backend)\n")
    assert imports_of(core, "lguest.fallback") == {"lguest.host.run"}
    pyx = tmp_path / "_core.pyx"
    pyx.write_text("cdef class Cpu:\n    def run(self, backend):\n        from .run import run_guest\n")
    assert imports_of(pyx, "lguest._core") == {"lguest.run"}
    backend = tmp_path / "backend.py"
    backend.write_text("from .. import Host, load_core\nfrom .. import messages as M\n")
    assert imports_of(backend, "lguest.unicorn.backend") == {"lguest", "lguest.messages"}
    assert layer_of("lguest.host.run") == "host" and layer_of("lguest.unicorn._uchook") == "unicorn"
    assert LAYERS.index(layer_of("lguest.run")) > LAYERS.index(layer_of("lguest._core"))


@pytest.mark.parametrize("old, new, names", [
    ("lguest.run", "lguest.host.run", ["run_guest", "Backend", "ScriptedBackend", "GuestKilled", "RunExit",
                                        "RunContext"]),
    ("lguest.launcher", "lguest.host.launcher", ["Launcher", "RunResult", "NOTIFY_MAX", "DEFAULT_CONSOLE_LIMIT"]),
])
def test_old_public_paths_are_the_same_objects(old: str, new: str, names: list[str]) -> None:
    a, b = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(a, name) is getattr(b, name), name


def test_public_names_keep_working() -> None:
    import lguest
    import lguest._core
    import lguest.unicorn

    for name in ("Host", "UsedVectors", "VectorBusy", "GuestMemory", "VirtualClock", "SystemClock", "NativeClock",
                 "load_core", "CORE", "Guest", "Cpu", "Regs", "core_of"):
        assert hasattr(lguest, name), name
    assert callable(lguest._core.bench_deliver) and callable(lguest._core.bench_copy_traps)
    assert lguest.unicorn.UnicornLauncher.__module__ == "lguest.unicorn.launcher"
