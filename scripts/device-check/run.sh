#!/usr/bin/env bash
# The device check: Kindling's GPU-tagged tests, its device benches and their PyTorch peers, all on one device in one
# run, with the JRE and jars of this bundle (scripts/device-check/build.sh makes it; no Java or Spark needed here).
#
#   ./run.sh OUT [--device cuda[:N]|cpu[:N]] [--quick]
#
# OUT gets: tests.xml (the JUnit report of the tests tagged gpu), gemm.jsonl, attention.jsonl and train.jsonl (each
# bench's --json rows: Kindling's, then the PyTorch peer's on the same shapes and device), run.log (every step's
# stderr) and summary.txt (one line per step, also printed on stderr). Every step has a deadline and the whole run
# one of 8 minutes (--quick: 4); a step that fails or runs out of time is reported and the others still run. Benches
# run in bf16 where Kindling's bench takes --dtype, else fp32, and the peer in the same precision. --quick uses tiny
# sizes (a CPU run of about two minutes); otherwise the sizes of issue 13's targets: GEMM 8192³, attention at N 4096
# (head dim 64) and 16384 (128), GPT-2 124M training at 1024 tokens. Exit code 1 when any step failed, 2 on bad usage.
# The peers' Python is $KINDLING_PYTHON, else python3.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
  echo "run.sh: $1 (usage: run.sh OUT [--device cuda[:N]|cpu[:N]] [--quick])" >&2
  exit 2
}

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage "name the output folder first"
OUT="$1"
shift
DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || usage "--device needs a value"; DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) usage "unknown option $1" ;;
  esac
done
case "$DEVICE" in
  cuda | cuda:[0-9]* ) TORCH_DEVICE="$DEVICE"; THREADS=1 ;;
  cpu) TORCH_DEVICE=cpu; THREADS=$(nproc) ;;
  cpu:[0-9]*) TORCH_DEVICE=cpu; THREADS="${DEVICE#cpu:}" ;;
  *) usage "--device must be cuda[:N] or cpu[:N], got $DEVICE" ;;
esac
PYTHON="${KINDLING_PYTHON:-python3}"
mkdir -p "$OUT" || usage "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/run.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
rm -f "$OUT"/{gemm,attention,train}.jsonl "$OUT/tests.xml"
if [ "$QUICK" = 1 ]; then DEADLINE=300; else DEADLINE=540; fi
FAILED=0
STDERR=$(mktemp)
trap 'rm -f "$STDERR"' EXIT

KINDLING=("$HERE/kindling")
say() {
  echo "device-check: $*" >&2
  echo "$*" >> "$SUMMARY"
}

# A field of a JSON row, as text (strings unquoted).
field() {
  sed -n "s/.*\"$2\": *\"\{0,1\}\([^,\"}]*\).*/\1/p" <<< "$1"
}

# An attribute of an XML element, as text.
attr() {
  sed -n "s/.* $2=\"\([^\"]*\)\".*/\1/p" <<< "$1"
}

# Why the last step failed: the first line of its stderr that is no log line, usage text or stack frame.
reason() {
  grep -v -e '^WARNING' -e '^INFO ' -e '^[Uu]sage:' -e '^\s' -e '^$' "$STDERR" | head -n 1 | cut -c1-200
}

# step NAME FILE LIMIT CMD…: runs CMD in the bundle folder, its stdout appended to OUT/FILE (-: to run.log) and its
# stderr to run.log, killed after LIMIT seconds or at the run's deadline; sets ROWS to the lines it added to FILE.
step() {
  local name="$1" file="$2" limit="$3"
  shift 3
  local left=$((DEADLINE - SECONDS)) start=$SECONDS rc target="$LOG" before=0
  ROWS=""
  if [ "$left" -le 5 ]; then
    say "$name: skipped, the run's ${DEADLINE} s are spent"
    FAILED=1
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$file" != - ]; then
    target="$OUT/$file"
    touch "$target"
    before=$(wc -l < "$target")
  fi
  printf '== %s (limit %d s): %s\n' "$name" "$limit" "$*" >> "$LOG"
  (cd "$HERE" && timeout --kill-after=10 "$limit" "$@") >> "$target" 2> "$STDERR"
  rc=$?
  cat "$STDERR" >> "$LOG"
  [ "$file" = - ] || ROWS=$(tail -n +$((before + 1)) "$target")
  STEP_TIME=$((SECONDS - start))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "$name: timed out after $limit s"
  elif [ "$rc" != 0 ]; then
    say "$name: failed (exit $rc: $(reason))"
  fi
  [ "$rc" = 0 ] || FAILED=1
  return "$rc"
}

# One summary line per result row of a bench step: its figure and where it came from.
report() {
  local name="$1" row
  while IFS= read -r row; do
    [ -n "$row" ] || continue
    case "$(field "$row" bench)" in
      gemm) say "$name: $(field "$row" impl) $(field "$row" gflops) GFLOP/s at $(field "$row" m)x$(field "$row" n)x$(field "$row" k) ($STEP_TIME s)" ;;
      attention) say "$name: $(field "$row" impl) fwd+bwd $(field "$row" fwd_bwd_ms) ms, $(field "$row" gflops_fwd_bwd) GFLOP/s at N $(field "$row" seq), head dim $(field "$row" head_dim) ($STEP_TIME s)" ;;
      train) say "$name: $(field "$row" impl) $(field "$row" tokens_per_s) tokens/s, $(field "$row" ms_per_step) ms/step, $(field "$row" params) params ($STEP_TIME s)" ;;
      *) say "$name: $row" ;;
    esac
  done <<< "$ROWS"
}

# The first row's FIELD in each of two row sets, and their ratio: "kindling / peer".
ratio() {
  local what="$1" field_name="$2" ours theirs
  ours=$(field "$(head -n 1 <<< "$3")" "$field_name")
  theirs=$(field "$(head -n 1 <<< "$4")" "$field_name")
  if [ -n "$ours" ] && [ -n "$theirs" ]; then
    say "$what: kindling / torch = $(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf (b > 0 ? "%.2fx" : "n/a"), (b > 0 ? a / b : 0) }') ($field_name)"
  fi
}

# bf16 where the bench takes --dtype, else fp32 (the bench's own precision); sets KDTYPE (its options) and PDTYPE.
# The CPU's GEMM is fp32 only, so bench gemm stays fp32 on a CPU device.
precision() {
  if "${KINDLING[@]}" bench "$1" --help 2>/dev/null | grep -q -- '--dtype' \
      && ! { [ "$1" = gemm ] && [[ "$DEVICE" == cpu* ]]; }; then
    KDTYPE=(--dtype bf16); PDTYPE=bf16
  else
    KDTYPE=(); PDTYPE=fp32
  fi
}

say "device check on $DEVICE$([ "$QUICK" = 1 ] && echo ', quick sizes'), output in $OUT"
step version - 60 "${KINDLING[@]}" version
sed -n 's/^devices /devices: /p' "$LOG" | while IFS= read -r line; do say "$line"; done

# The tests tagged gpu, from every test jar of the bundle; they skip themselves where their device is unavailable.
# One OpenBLAS thread, as under Maven: Kindling splits GEMMs across its own threads.
REPORTS=$(mktemp -d)
step "tests (tag gpu)" - 150 \
  env OPENBLAS_NUM_THREADS=1 jre/bin/java $(cat "$HERE/jvm.flags") -Dkindling.home="$HERE" -cp "lib/*:tests/*" \
  org.junit.platform.console.ConsoleLauncher execute --disable-banner --disable-ansi-colors --details=tree \
  --scan-classpath "$(ls "$HERE"/tests/kindling-*-tests.jar | paste -sd: -)" --include-tag gpu --reports-dir "$REPORTS"
if [ -f "$REPORTS/TEST-junit-jupiter.xml" ]; then
  cp "$REPORTS/TEST-junit-jupiter.xml" "$OUT/tests.xml"
  suite=$(grep -m1 '<testsuite ' "$OUT/tests.xml")
  say "tests (tag gpu): $(attr "$suite" tests) run, $(attr "$suite" failures) failed, $(attr "$suite" errors) errors, $(attr "$suite" skipped) skipped ($STEP_TIME s)"
  [ "$(attr "$suite" tests)" != 0 ] || say "tests (tag gpu): none found in $(cd "$HERE" && ls tests/kindling-*-tests.jar | paste -sd' ' -)"
fi
rm -rf "$REPORTS"

if [ "$QUICK" = 1 ]; then
  GEMMS=("128 128 128")
  GEMM_SECONDS=0.2
  ATTENTIONS=("256 2 32")
  ATTENTION_REPS=2
  TRAIN_MODEL=(--layers 2 --d-model 64 --heads 2 --vocab 256)
  PEER_MODEL=(--layers 2 --d-model 64 --heads 2 --vocab 256 --max-seq 64)
  TRAIN_RUN=(--seq 64 --batch 2 --steps 3 --warmup 1)
  LIMITS=(60 60 60 60 120 120)
else
  GEMMS=("8192 8192 8192")
  GEMM_SECONDS=2
  ATTENTIONS=("4096 16 64" "16384 8 128")
  ATTENTION_REPS=5
  PRESET="$HERE/conf/models/gpt2-124m.yaml"
  yaml() { sed -n "s/^$1: *\([0-9]*\).*/\1/p" "$PRESET"; }
  TRAIN_MODEL=(--preset gpt2-124m)
  PEER_MODEL=(--layers "$(yaml n_layer)" --d-model "$(yaml d_model)" --heads "$(yaml n_head)" --vocab "$(yaml vocab)"
    --max-seq "$(yaml max_seq)")
  TRAIN_RUN=(--seq 1024 --batch 8 --steps 10 --warmup 3)
  # With the tests' 150 s these add up to the 540 s deadline at most: gemm, its peer, each of two attentions and its peer, train and its peer.
  LIMITS=(60 30 45 20 100 50)
fi

precision gemm
for shape in "${GEMMS[@]}"; do
  read -r m n k <<< "$shape"
  step "gemm kindling $PDTYPE" gemm.jsonl "${LIMITS[0]}" "${KINDLING[@]}" bench gemm --m "$m" --n "$n" --k "$k" \
    --seconds "$GEMM_SECONDS" --device "$DEVICE" "${KDTYPE[@]}" --json
  report "gemm kindling $PDTYPE"; ours="$ROWS"
  step "gemm torch $PDTYPE" gemm.jsonl "${LIMITS[1]}" "$PYTHON" peers/torch_gemm.py --m "$m" --n "$n" --k "$k" \
    --seconds "$GEMM_SECONDS" --device "$TORCH_DEVICE" --dtype "$PDTYPE" --threads "$THREADS" --json
  report "gemm torch $PDTYPE"
  ratio "gemm ${m}x${n}x${k}" gflops "$ours" "$ROWS"
done

precision attention
for shape in "${ATTENTIONS[@]}"; do
  read -r seq heads dim <<< "$shape"
  step "attention kindling $PDTYPE" attention.jsonl "${LIMITS[2]}" "${KINDLING[@]}" bench attention --seq "$seq" \
    --heads "$heads" --head-dim "$dim" --reps "$ATTENTION_REPS" --device "$DEVICE" "${KDTYPE[@]}" --json
  report "attention kindling $PDTYPE"; ours="$ROWS"
  step "attention torch $PDTYPE" attention.jsonl "${LIMITS[3]}" "$PYTHON" peers/torch_attention.py --seq "$seq" \
    --heads "$heads" --head-dim "$dim" --reps "$ATTENTION_REPS" --device "$TORCH_DEVICE" --dtype "$PDTYPE" \
    --threads "$THREADS" --json
  report "attention torch $PDTYPE"
  ratio "attention N $seq head dim $dim" gflops_fwd_bwd "$ours" "$ROWS"
done

precision train
step "train kindling $PDTYPE" train.jsonl "${LIMITS[4]}" "${KINDLING[@]}" bench train "${TRAIN_MODEL[@]}" \
  "${TRAIN_RUN[@]}" --device "$DEVICE" "${KDTYPE[@]}" --json
report "train kindling $PDTYPE"; ours="$ROWS"
step "train torch $PDTYPE" train.jsonl "${LIMITS[5]}" "$PYTHON" peers/torch_train.py "${PEER_MODEL[@]}" "${TRAIN_RUN[@]}" \
  --device "$TORCH_DEVICE" --dtype "$PDTYPE" --threads "$THREADS" --json
report "train torch $PDTYPE"
if [ -n "$ours" ] && [ -n "$ROWS" ] && [ "$(field "$ours" params)" != "$(field "$ROWS" params)" ]; then
  say "train: the models differ: kindling $(field "$ours" params) params, torch $(field "$ROWS" params)"
  FAILED=1
fi
ratio "train" tokens_per_s "$ours" "$ROWS"

say "done in $SECONDS s$([ "$FAILED" = 1 ] && echo ', with failures (see above and run.log)')"
exit "$FAILED"
