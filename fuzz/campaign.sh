#!/usr/bin/env bash
# One campaign worker: runs fuzz/fuzz_core.py under the sanitizer build in
# chunks of CHUNK inputs until TARGET inputs have been executed, restarting
# after a finding (libFuzzer stops at the first crash; the reproducer is
# kept in fuzz/findings/).  Several workers may share one corpus directory.
#
#   nice -n 10 fuzz/campaign.sh NAME TARGET [CHUNK]
#
# Environment: LGUEST_FUZZ_PY_EVERY (default 4), LGUEST_FUZZ_INSTRUMENT
# (default none), CORPUS (default fuzz/campaign-corpus), MAX_LEN (512).
# Progress: fuzz/logs/NAME.log (libFuzzer output), fuzz/logs/NAME.tally
# (one line per chunk: start end executed exit-code).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="$1"; TARGET="$2"; CHUNK="${3:-1000000}"
CORPUS="${CORPUS:-$HERE/campaign-corpus}"
export LGUEST_FUZZ_PY_EVERY="${LGUEST_FUZZ_PY_EVERY:-4}"
export LGUEST_FUZZ_INSTRUMENT="${LGUEST_FUZZ_INSTRUMENT:-none}"
export PYTHONMALLOC="${PYTHONMALLOC:-pymalloc}"
export LGUEST_SAN_FROZEN=1   # fuzz the snapshot that is built; never rebuild mid-campaign
mkdir -p "$CORPUS" "$HERE/findings" "$HERE/logs"
[[ -n "$(ls -A "$CORPUS")" ]] || cp "$HERE"/corpus/* "$CORPUS"/
LOG="$HERE/logs/$NAME.log"; TALLY="$HERE/logs/$NAME.tally"
done_runs=0
if [[ -f "$TALLY" ]]; then done_runs=$(awk '{s+=$3} END {print s+0}' "$TALLY"); fi
while (( done_runs < TARGET )); do
  n=$(( TARGET - done_runs < CHUNK ? TARGET - done_runs : CHUNK ))
  start=$(date +%s)
  "$HERE/run_sanitized.sh" "$HERE/fuzz_core.py" -runs="$n" -max_len="${MAX_LEN:-512}" \
      -print_final_stats=1 -artifact_prefix="$HERE/findings/$NAME-" "$CORPUS" >>"$LOG" 2>&1
  rc=$?
  end=$(date +%s)
  ran=$(grep -a "stat::number_of_executed_units" "$LOG" | tail -1 | awk '{print $2}')
  [[ -n "$ran" ]] || ran=0
  echo "$start $end $ran $rc" >>"$TALLY"
  done_runs=$(( done_runs + ran ))
  if (( ran == 0 )); then echo "worker $NAME: a chunk executed nothing (rc $rc); stopping" >>"$LOG"; break; fi
done
echo "worker $NAME finished: $done_runs inputs" >>"$LOG"
