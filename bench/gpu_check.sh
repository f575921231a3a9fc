#!/usr/bin/env bash
# The GPU check: every case of bench/gpu_check.py in its own process under its own time limit, then the
# tables (printed last, and written to $OUT/gpu_check.md with the results and the log when $OUT is set).
#
#   bash bench/gpu_check.sh            # one H200: about 6 minutes; the limits add up to 460 s (+ 60 s for the data at most)
#   bash bench/gpu_check.sh --smoke    # tiny sizes on the CPU: proves the script end to end
#
# Run from anywhere; it works in the repository root. Needs torch, hydra-core, omegaconf, torchdata and
# the project; wheels in .whl/ (the device README's way of carrying packages) are installed first, e.g.
# hydra-core, omegaconf, torchdata and the optional kernel libraries (flash-linear-attention, mamba-ssm,
# causal-conv1d) for part f.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/*.whl failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import torch, hydra, omegaconf, torchdata" \
    || { echo "missing packages: carry hydra-core, omegaconf, antlr4-python3-runtime and torchdata as wheels in .whl/"; exit 1; }

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -n "$SMOKE" ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
{
    echo "gpu_check ${SMOKE:-full} in $WORK, $(date -u +%FT%TZ)"
    $PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|',
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,power.limit --format=csv,noheader
} 2>&1 | tee -a "$LOG"

started=$SECONDS
timeout 60 $PY bench/gpu_check.py data --work "$WORK" $SMOKE >>"$LOG" 2>&1 || { echo "writing the data failed: $LOG"; tail -20 "$LOG"; exit 1; }
while read -r part case limit; do
    t0=$SECONDS
    echo "== $part $case (limit ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" $PY bench/gpu_check.py run "$part" "$case" --work "$WORK" $SMOKE >>"$LOG" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        why=$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "time limit ${limit}s" || echo "exit $rc")
        printf '{"part": "%s", "case": "%s", "error": "%s (log: gpu_check.log)"}\n' "$part" "$case" "$why" >>"$WORK/results.jsonl"
        tail -5 "$LOG"
    fi
    echo "   $((SECONDS - t0)) s" | tee -a "$LOG"
done < <($PY bench/gpu_check.py cases $SMOKE)

$PY bench/gpu_check.py table --work "$WORK" $SMOKE >"$WORK/gpu_check.md"
echo "total $((SECONDS - started)) s" >>"$WORK/gpu_check.md"
if [ -n "${OUT:-}" ]; then
    cp "$WORK/gpu_check.md" "$WORK/results.jsonl" "$LOG" "$OUT"/ 2>/dev/null
fi
cat "$WORK/gpu_check.md"
