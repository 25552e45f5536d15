"""The twins agree on their API: ``lguest._core``, ``lguest.fallback`` and ``lguest/_core.pyi``.

Walks the public names of both cores and of the stub and checks that they
name the same module functions, classes, methods and attributes, with the
same parameters (names, kinds, defaults), the same read-only attributes and
the same constructor arguments -- so a name or signature added to one twin
and not the other fails here.  (What each argument accepts is the misuse
fuzzer's business: tests/test_api_fuzz.py.)  The compiled core is the
reference.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import lguest
from lguest import fallback

CLASSES = ("Guest", "Cpu", "Regs")
# In the compiled core only, on purpose: C entry points and benchmark loops,
# and the native clock (lguest._clock) re-exported for older imports.
COMPILED_ONLY = {"bench_deliver", "bench_copy_traps", "native_api", "native_clock", "NativeClock"}
STUB = Path(lguest.__file__).resolve().parent / "_core.pyi"


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    try:
        return lguest.load_core("cython")
    except ImportError as exc:
        pytest.skip(f"the compiled core is not built: {exc}")


# The compiled core's own names may be defined by its compiled parts:
# Regs (struct lguest_regs' face) lives in lguest._regs, the Cpu's clock
# methods in its base class lguest._clock.CpuTimer.
PARTS = {"lguest._core": ("lguest._core", "lguest._regs"), "lguest.fallback": ("lguest.fallback",)}


def public_api(module: ModuleType) -> set[str]:
    """Names a module defines for its users: its own functions and classes, and NAME."""
    names = {"NAME"}
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isclass(value) or callable(value)) and getattr(value, "__module__", None) in PARTS[module.__name__]:
            names.add(name)
    return names


def params(func: object) -> list[tuple[str, str, object]]:
    """(name, kind, default) of each parameter, annotations ignored."""
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.fixture(scope="module")
def instances(compiled):
    """One live Guest, Cpu and Regs of each core."""
    out = {}
    for mod in (compiled, fallback):
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        guest = host.new_guest(lguest.GuestMemory(1 << 20), core=mod, clock=lguest.VirtualClock())
        cpu = guest.new_cpu()
        out[mod.NAME] = {"Guest": guest, "Cpu": cpu, "Regs": cpu.regs}
    return out


def public_members(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def writable(obj: object, name: str) -> bool:
    try:
        setattr(obj, name, getattr(obj, name))
    except AttributeError:
        return False
    return True


# --- the two cores -----------------------------------------------------------------------------
def test_both_cores_define_the_same_module_names(compiled):
    assert public_api(compiled) - COMPILED_ONLY == public_api(fallback)
    assert COMPILED_ONLY <= set(dir(compiled))


def test_module_functions_have_the_same_parameters(compiled):
    for name in sorted(public_api(fallback)):
        value = getattr(fallback, name)
        if callable(value) and not inspect.isclass(value):
            assert params(getattr(compiled, name)) == params(value), name


@pytest.mark.parametrize("cls", CLASSES)
def test_classes_have_the_same_members(instances, cls):
    cy, py = instances["cython"][cls], instances["python"][cls]
    assert public_members(cy) == public_members(py)
    for name in sorted(public_members(py)):
        a, b = getattr(type(cy), name, None), getattr(type(py), name, None)
        if inspect.isroutine(b) or inspect.isroutine(a):
            assert params(a) == params(b), f"{cls}.{name}"
        else:
            assert writable(cy, name) == writable(py, name), f"{cls}.{name} is read-only in one core only"


@pytest.mark.parametrize("cls", CLASSES)
def test_constructors_take_the_same_arguments(compiled, cls):
    """Compiled constructors have no introspectable signature: call them with
    every parameter of the Python twin's, by keyword, and a keyword-only one
    positionally (which both must refuse)."""
    sig = inspect.signature(getattr(fallback, cls).__init__)
    host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    for mod in (compiled, fallback):
        mem = lguest.GuestMemory(1 << 20)
        guest = mod.Guest(host, mem, clock=lguest.VirtualClock())
        full = {"Guest": {"host": host, "memory": mem, "page_offset": 0, "clock": lguest.VirtualClock()},
                "Cpu": {"guest": guest, "id": 3},
                "Regs": {"array": None}}[cls]
        assert set(full) == set(sig.parameters) - {"self"}
        getattr(mod, cls)(**full)
        kwonly = [n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY]
        if kwonly:
            positional = [full[n] for n in sig.parameters if n != "self"]
            with pytest.raises(TypeError):
                getattr(mod, cls)(*positional)


# --- the stub ------------------------------------------------------------------------------------
def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def stub_params(node: ast.FunctionDef) -> list[tuple[str, str, object]]:
    a = node.args
    out = []
    defaults = [None] * (len(a.posonlyargs) + len(a.args) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(a.posonlyargs + a.args, defaults, strict=True):
        out.append((arg.arg, "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty if default is None
                    else ast.literal_eval(default)))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((arg.arg, "KEYWORD_ONLY", inspect.Parameter.empty if default is None else ast.literal_eval(default)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out


def stub_names(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("_"):
            names.update({a.asname: node for a in node.names if a.asname == a.name})  # explicit re-exports
    return names


def test_the_stub_names_what_the_compiled_core_defines(compiled):
    assert set(stub_names(stub_tree())) == public_api(compiled) | (COMPILED_ONLY & set(dir(compiled)))


def test_stub_functions_have_the_compiled_parameters(compiled):
    for name, node in stub_names(stub_tree()).items():
        if isinstance(node, ast.FunctionDef):
            assert stub_params(node) == [(n, k, d) for n, k, d in params(getattr(compiled, name))], name


@pytest.mark.parametrize("cls", CLASSES)
def test_stub_classes_have_the_compiled_members(compiled, instances, cls):
    node = stub_names(stub_tree())[cls]
    members: dict[str, str] = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign):
            members[item.target.id] = "attribute"
        elif isinstance(item, ast.FunctionDef):
            is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)
            members[item.name] = "read-only" if is_property else "method"
            if item.name == "__init__":
                assert stub_params(item) == params(getattr(fallback, cls).__init__), f"{cls}.__init__"
            elif not is_property:
                assert stub_params(item) == params(getattr(getattr(compiled, cls), item.name)), f"{cls}.{item.name}"
    obj = instances["cython"][cls]
    assert {n for n in members if not n.startswith("_")} == public_members(obj)
    for name, kind in members.items():
        if kind != "method" and not name.startswith("_"):
            assert writable(obj, name) == (kind == "attribute"), f"{cls}.{name}: the stub says {kind}"
