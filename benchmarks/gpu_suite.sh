#!/usr/bin/env bash
# Every GPU figure of the package in one run: CUDA tests (max errors), rendering, the paper-shape
# training step (ViT-S and ViT-B), extraction, a field fit and the environment.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--device cuda|cpu] [--quick] [--budget SECONDS]
#
# Parts, in order (each in OUT_DIR/logs/<part>.log, its figures in OUT_DIR/<part>.json):
#   environment   GPU, driver, CUDA, torch, gsplat and package versions
#   gsplat        gsplat installed from .whl/ when missing, its CUDA kernels JIT-compiled (timed)
#   cuda_tests    pytest -m cuda: gsplat vs the torch twin, SnD step on CUDA vs CPU, bf16 step
#   render        bench_render.py --paper: one pass vs 3 channels per pass, C = 384 and 768
#   train_vits14  bench_train.py --random-weights --config scannetpp_vits14 (bf16 on CUDA)
#   train_vitb14  the same with scannetpp_vitb14
#   extract       bench_extract.py: SnDModel vs Dinov2Model, ViT-S/B, bf16, batch 32, 224/448 px
#   fields        bench_fields.py: the field fit of one glossy scene
# A failed part is recorded (exit status and the end of its log) and the suite goes on; at the end
# benchmarks/figures.py writes OUT_DIR/figures.json and OUT_DIR/figures.md with an entry for every
# part. --quick runs every part's code path at toy shapes (the CPU dry run of CI); --device cpu
# skips the CUDA-only tests (with their reason). --budget caps the whole run: each part's time limit
# shrinks to what is left (less REPORT_SECONDS for the report), and parts that no longer fit are
# recorded as failed with exit status 124, so the report is written inside the budget.
# Exit status: 0 when every part succeeded, else 1.
# The exact device command and the time budget are in docs/performance.md.
set -u

usage() {
    echo "usage: bash benchmarks/gpu_suite.sh OUT_DIR [--device cuda|cpu] [--quick] [--budget SECONDS]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
OUT_DIR=$1
shift
DEVICE=cuda
QUICK=0
BUDGET=0  # seconds; 0: no cap
REPORT_SECONDS=20
while [ $# -gt 0 ]; do
    case $1 in
        --device) [ $# -ge 2 ] || usage; DEVICE=$2; shift 2 ;;
        --device=*) DEVICE=${1#--device=}; shift ;;
        --quick) QUICK=1; shift ;;
        --budget) [ $# -ge 2 ] || usage; BUDGET=$2; shift 2 ;;
        --budget=*) BUDGET=${1#--budget=}; shift ;;
        *) echo "gpu_suite.sh: error: unknown argument '$1'" >&2; usage ;;
    esac
done
case $DEVICE in cuda | cpu) ;; *) echo "gpu_suite.sh: error: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
case $BUDGET in '' | *[!0-9]*) echo "gpu_suite.sh: error: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
SUITE_START=$(date +%s)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT_DIR/logs" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/parts.tsv"
PYTHON=${PYTHON:-python3}
# gsplat wheels carried to a machine without internet are installed here (part "gsplat").
SITE=${SND_SITE:-/tmp/snd_site}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO" || exit 2

# seconds_since START_NS: wall seconds since START_NS (date +%s%N), to a tenth.
seconds_since() {
    local ms=$((($(date +%s%N) - $1) / 1000000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# run_part NAME TIMEOUT_S COMMAND...: the command's output goes to logs/NAME.log; its exit status
# (124 when it ran past TIMEOUT_S) and wall seconds to parts.tsv.
run_part() {
    local name=$1 limit=$2 start code left
    shift 2
    echo "== $name: $*"
    if [ "$BUDGET" -gt 0 ]; then
        left=$((BUDGET - REPORT_SECONDS - ($(date +%s) - SUITE_START)))
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    start=$(date +%s%N)
    if [ "$limit" -gt 0 ]; then
        timeout "$limit" "$@" >"$OUT_DIR/logs/$name.log" 2>&1
        code=$?
    else
        echo "not run: the suite's --budget of $BUDGET s was spent" >"$OUT_DIR/logs/$name.log"
        code=124
    fi
    printf '%s\t%d\t%s\n' "$name" "$code" "$(seconds_since "$start")" >>"$OUT_DIR/parts.tsv"
    echo "   exit $code after $(tail -n 1 "$OUT_DIR/parts.tsv" | cut -f 3) s"
}

# gsplat: the installed one, else the wheel carried in .whl/ (the device has no network), installed
# into $SITE; the time goes to the part's figures. Its output: logs/gsplat_install.log.
install_gsplat() {
    local start
    "$PYTHON" -c "import gsplat" 2>/dev/null && return 0
    if ! ls "$REPO"/.whl/gsplat-*.whl >/dev/null 2>&1; then
        echo "gsplat is not installed and no .whl/gsplat-*.whl was carried (docs/performance.md)"
        return 1
    fi
    start=$(date +%s%N)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl || return 1
    export SND_GSPLAT_SOURCE="carried wheel $(basename "$REPO"/.whl/gsplat-*.whl)"
    SND_GSPLAT_INSTALL_SECONDS=$(seconds_since "$start")
    export SND_GSPLAT_INSTALL_SECONDS
}

if [ "$QUICK" = 1 ]; then
    QUICK_FLAG=(--quick)
    TRAIN_STEPS=(--steps 1 --warmup 1)
    EXTRACT=(--batch-size 2 --sizes 56 --rounds 1 --warmup 0)
    FIELDS=(--quick --frames 8)
else
    QUICK_FLAG=()
    TRAIN_STEPS=(--steps 5 --warmup 2)
    EXTRACT=(--batch-size 32 --sizes 224 448 --rounds 10 --warmup 2)
    FIELDS=()
fi
# bf16 on the GPU (the paper's setting); on CPU the configs' float32 (autocast to bf16 is many times slower).
PRECISION=()
[ "$DEVICE" = cuda ] && PRECISION=(--mixed_precision bf16)

run_part environment 300 "$PYTHON" benchmarks/figures.py environment "$OUT_DIR/environment.json"
install_gsplat >"$OUT_DIR/logs/gsplat_install.log" 2>&1
# On CUDA the first use of gsplat compiles its kernels (minutes; docs/performance.md).
run_part gsplat 480 "$PYTHON" benchmarks/figures.py gsplat "$OUT_DIR/gsplat.json" --device "$DEVICE"
rm -f "$OUT_DIR/cuda_errors.json" "$OUT_DIR/cuda_tests.xml"
run_part cuda_tests 600 env SND_MAX_ERRORS="$OUT_DIR/cuda_errors.json" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider \
    --junitxml="$OUT_DIR/cuda_tests.xml" tests/splatting/test_render_gsplat.py tests/training/test_step_cuda.py
run_part render 600 "$PYTHON" benchmarks/bench_render.py --paper --device "$DEVICE" --json "$OUT_DIR/render.json" "${QUICK_FLAG[@]}"
for size in vits14 vitb14; do
    # Both configs train on the same generated scenes (same size, gap and seed): made once.
    run_part "train_$size" 900 "$PYTHON" benchmarks/bench_train.py --device "$DEVICE" --random-weights --config "scannetpp_$size" \
        "${TRAIN_STEPS[@]}" "${PRECISION[@]}" --scenes-dir "$OUT_DIR/scenes" --json "$OUT_DIR/train_$size.json" "${QUICK_FLAG[@]}"
done
run_part extract 600 "$PYTHON" benchmarks/bench_extract.py --device "$DEVICE" --variants small base --dtypes bfloat16 \
    "${EXTRACT[@]}" --json "$OUT_DIR/extract.json"
run_part fields 900 "$PYTHON" benchmarks/bench_fields.py --device "$DEVICE" --scenes 1 "${FIELDS[@]}" --json "$OUT_DIR/fields.json"

rm -rf "$OUT_DIR/scenes"
QUICK_REPORT=()
[ "$QUICK" = 1 ] && QUICK_REPORT=(--quick)
"$PYTHON" benchmarks/figures.py report "$OUT_DIR" --device "$DEVICE" "${QUICK_REPORT[@]}" || exit 1
! cut -f 2 "$OUT_DIR/parts.tsv" | grep -qv '^0$'
