#!/usr/bin/env bash
# Run a Python script (or module) against an AddressSanitizer + UBSan build
# of lguest, in a venv of its own.
#
#   fuzz/run_sanitized.sh [--rebuild] SCRIPT.py [ARGS...]
#   fuzz/run_sanitized.sh [--rebuild] -m MODULE [ARGS...]     e.g. -m pytest tests -q
#   fuzz/run_sanitized.sh --build-only
#
# Two flavours, chosen by LGUEST_SAN_CC (default clang):
#
#   clang  fuzz/.venv-asan      CC=clang, LGUEST_SANITIZE=1 (-fsanitize=address,undefined)
#                               plus -fsanitize=fuzzer-no-link so libFuzzer (atheris) sees
#                               the compiled core's edges; runtime: atheris' asan_with_fuzzer.so
#                               (clang's ASan+UBSan runtime with libFuzzer) in LD_PRELOAD.
#   gcc    fuzz/.venv-asan-gcc  gcc, LGUEST_SANITIZE=1 exactly as setup.py has it; runtime:
#                               $(gcc -print-file-name=libasan.so) in LD_PRELOAD.  No atheris.
#
# The venv is created once (idempotent).  lguest is (re)installed into it,
# NOT editable, from a scratch copy of the working tree whenever the sources
# changed (a hash is kept in the venv), so the instrumented _core*.so lives
# in the venv's site-packages and never touches lguest/_core*.so or
# the generated lguest/*.c of the source tree (the main .venv's editable build).
#
# Environment while the script runs (any value you set yourself is kept in front):
#   ASAN_OPTIONS=detect_leaks=0:...      CPython leaks by design at exit
#   UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
#   PYTHONMALLOC=malloc                  (default; set PYTHONMALLOC=pymalloc to keep pymalloc)
# LGUEST_SAN_FROZEN=1 keeps an existing build even if the sources changed
# since (a campaign fuzzes one fixed snapshot; the hash is in the venv).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
FLAVOUR="${LGUEST_SAN_CC:-clang}"
BASE_PY="${LGUEST_SAN_PYTHON:-python3}"
case "$FLAVOUR" in
  clang) VENV="$HERE/.venv-asan" ;;
  gcc)   VENV="$HERE/.venv-asan-gcc" ;;
  *) echo "LGUEST_SAN_CC must be clang or gcc, not $FLAVOUR" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"

REBUILD=0
BUILD_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rebuild) REBUILD=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    *) break ;;
  esac
done

log() { echo "run_sanitized: $*" >&2; }

source_hash() {
  (cd "$ROOT" && cat setup.py pyproject.toml lguest/*.py lguest/*.pyx lguest/*.pyi 2>/dev/null; echo "$FLAVOUR") \
    | sha256sum | cut -d' ' -f1
}

make_venv() {
  if [[ ! -x "$PY" ]]; then
    log "creating $VENV"
    "$BASE_PY" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
  # unicorn: the Unicorn backend's tests and fuzz/fuzz_guest.py run under the sanitizers too
  local pkgs=(numpy "Cython>=3.0" setuptools wheel pytest hypothesis "unicorn==2.1.4")
  if [[ "$FLAVOUR" == clang ]]; then
    command -v clang >/dev/null || { log "clang missing: apt-get update && apt-get install -y clang"; exit 1; }
    pkgs+=(atheris)
  fi
  # Cheap when everything is there already.
  "$PY" -m pip install -q "${pkgs[@]}"
}

install_lguest() {
  local want have tmp
  want="$(source_hash)"
  have="$(cat "$VENV/.lguest-source-hash" 2>/dev/null || true)"
  if [[ $REBUILD -eq 0 ]] && { [[ "$want" == "$have" ]] || [[ -n "${LGUEST_SAN_FROZEN:-}" ]]; } \
       && compgen -G "$VENV/lib/python*/site-packages/lguest/_core*.so" >/dev/null; then
    # (not an import check: the instrumented .so only loads with the runtime preloaded)
    return
  fi
  tmp="$(mktemp -d /tmp/lguest-san-build.XXXXXX)"
  # A scratch copy of the working tree (uncommitted edits included), minus
  # every build product: nothing is generated inside the real tree.
  cp -r "$ROOT/lguest" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$tmp/"
  rm -rf "$tmp/lguest/__pycache__" "$tmp"/lguest/*.so "$tmp"/lguest/*.c "$tmp"/lguest/*.html
  log "building lguest ($FLAVOUR, LGUEST_SANITIZE=1) from $tmp into $VENV"
  if [[ "$FLAVOUR" == clang ]]; then
    (cd "$tmp" && CC=clang CXX=clang++ LDSHARED="clang -shared" \
        CFLAGS="-fsanitize=fuzzer-no-link" LGUEST_SANITIZE=1 \
        "$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall . ) >&2
  else
    (cd "$tmp" && CC=gcc LGUEST_SANITIZE=1 \
        "$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall . ) >&2
  fi
  rm -rf "$tmp"
  echo "$want" > "$VENV/.lguest-source-hash"
}

runtime_env() {
  if [[ "$FLAVOUR" == clang ]]; then
    local site
    site="$("$PY" -c 'import atheris; print(atheris.path())')"
    export LD_PRELOAD="$site/asan_with_fuzzer.so${LD_PRELOAD:+:$LD_PRELOAD}"
  else
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so)${LD_PRELOAD:+:$LD_PRELOAD}"
  fi
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0:allocator_may_return_null=1"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1"
  export PYTHONMALLOC="${PYTHONMALLOC:-malloc}"
  # Never pick up the source tree's lguest (and its uninstrumented .so).
  export PYTHONSAFEPATH=1
  export LGUEST_SAN_CC="$FLAVOUR"
  # libFuzzer's -merge/-fork re-run argv[0]: `#!/usr/bin/env python3` must be this venv's.
  export PATH="$VENV/bin:$PATH"
  unset PYTHONPATH
}

make_venv
install_lguest
[[ $BUILD_ONLY -eq 1 ]] && { log "ready: $VENV"; exit 0; }
[[ $# -ge 1 ]] || { echo "usage: $0 [--rebuild] SCRIPT.py|-m MODULE [ARGS...]" >&2; exit 2; }
runtime_env
exec "$PY" "$@"
