"""Build the API reference from the docstrings with pdoc, and check it.

    python docs/build_api.py                 # HTML into build/api/ (open build/api/index.html)
    python docs/build_api.py -o DIR --check  # CI: also fail on a pdoc warning or a missing docstring

Every module of the installed ``lguest`` package is documented (found by
walking the package, so a moved module needs no edit here).  ``--check``
fails when pdoc warns, when a module has no docstring, or when a class or
function the package exports at the top level (``lguest.__all__``) has none.
KNOWN_UNDOCUMENTED lists the exports still without one: the check also fails
when one of them gains a docstring, so the list only ever shrinks.

Needs the docs extra: pip install -e '.[docs]'.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import warnings
from pathlib import Path

#: Top-level exports without a docstring yet (remove an entry when you add one).
KNOWN_UNDOCUMENTED: set[str] = set()


def modules() -> list[str]:
    import lguest

    names = ["lguest"]
    for info in pkgutil.walk_packages(lguest.__path__, "lguest."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def problems(names: list[str]) -> list[str]:
    import lguest

    found = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # e.g. lguest.unicorn without the extra
            found.append(f"{name}: cannot import ({exc})")
            continue
        if not (mod.__doc__ or "").strip():
            found.append(f"{name}: module has no docstring")
    for export in lguest.__all__:
        obj = getattr(lguest, export)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        documented = bool((obj.__doc__ or "").strip())
        if not documented and export not in KNOWN_UNDOCUMENTED:
            found.append(f"lguest.{export}: no docstring")
        if documented and export in KNOWN_UNDOCUMENTED:
            found.append(f"lguest.{export}: documented now; remove it from KNOWN_UNDOCUMENTED")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="build/api", help="output directory (default build/api)")
    ap.add_argument("--check", action="store_true", help="fail on pdoc warnings and missing docstrings")
    args = ap.parse_args(argv)
    import pdoc

    names = modules()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*names, output_directory=Path(args.output))
    # pdoc's own complaints (a broken reference, an unimportable module), not
    # the library's: lguest warns only when its compiled core is missing.
    # lguest.__all__ names lguest.fallback, so pdoc adds it twice: harmless.
    found = [f"pdoc: {w.message}" for w in caught
             if ("pdoc" in (w.filename or "") or "pdoc" in str(w.message)) and "already been added" not in str(w.message)]
    if args.check:
        found += problems(names)
    print(f"API reference: {len(names)} modules -> {Path(args.output) / 'index.html'}")
    for p in found:
        print(f"  {p}", file=sys.stderr)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
