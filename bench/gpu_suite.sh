#!/bin/sh
# The GPU check in one run: the GPU-only tests (tests/test_cuda_paths.py: no host
# synchronisation in the hot paths), every bench_lcam measure at bf16 + channels_last (with
# the training steps also in the reference's settings, for the peak-memory comparison, and a
# profiler table per measure), the frozen-backbone training steps, the data path, then the
# same at torch.compile (slowest to start, so last). Each step writes its JSON as it ends
# and report.md is rebuilt after each, so a run cut short still leaves its tables; a step
# that fails (or a measure inside one) is reported and the others still run.
# Usage: sh bench/gpu_suite.sh [OUT_DIR]    (OUT_DIR: runs/bench; -h, --help: this text)
# Environment: DEVICE (cuda), BATCH (128), WORKERS (16), DATA_IMAGES (1024), COMPILE_MODE
#   (default; empty: skip the compiled run), EXTRA (more bench_lcam flags, e.g.
#   "--families vgg16 --iters 20"), LAUNCHER (python)
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
case "${1-}" in
-*)
	echo "gpu_suite.sh: error: unknown option '$1' (usage: sh bench/gpu_suite.sh [OUT_DIR]; --help)" >&2
	exit 2
	;;
esac
if [ $# -gt 1 ]; then
	echo "gpu_suite.sh: error: one argument at most, the output folder (usage: sh bench/gpu_suite.sh [OUT_DIR])" >&2
	exit 2
fi
OUT_DIR=${1:-runs/bench}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${LAUNCHER:-python}
FAST="--device ${DEVICE:-cuda} --amp bf16 --channels_last --batch_size ${BATCH:-128} ${EXTRA:-}"
mkdir -p "$OUT_DIR"

report() {
	$PY -m bench.report "$OUT_DIR"/*.json --output "$OUT_DIR/report.md" >/dev/null || true
}

step() { # step NAME COMMAND...: run it, go on if it fails (its output says why), rebuild the report
	name=$1
	shift
	"$@" || echo "gpu_suite: step '$name' failed with exit status $?; going on" >&2
	report
}

# 0. the GPU-only tests: no host synchronisation in training steps, evaluation, device decoding
$PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cuda_paths.py" >"$OUT_DIR/cuda_tests.txt" 2>&1 || true
tail -n 3 "$OUT_DIR/cuda_tests.txt"
step "bf16 + channels_last" $PY -m bench.bench_lcam $FAST --profile "$OUT_DIR/profile" \
	--output "$OUT_DIR/1_bf16_channels_last.json"
step "frozen backbone" $PY -m bench.bench_lcam $FAST --backbone_mode frozen --baselines "" --no_reference_settings \
	--output "$OUT_DIR/2_bf16_channels_last_frozen.json"
step "data path" $PY -m bench.bench_data --device "${DEVICE:-cuda}" --amp bf16 --channels_last \
	--num_workers "${WORKERS:-16}" --batch_size "${BATCH:-128}" --images "${DATA_IMAGES:-1024}" \
	--output "$OUT_DIR/3_data_path.json"
if [ -n "${COMPILE_MODE-default}" ]; then
	step "compile" $PY -m bench.bench_lcam $FAST --compile "${COMPILE_MODE:-default}" --baselines "" \
		--no_reference_settings --output "$OUT_DIR/4_bf16_channels_last_compile.json"
fi
cat "$OUT_DIR/report.md"
