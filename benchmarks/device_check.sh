#!/usr/bin/env bash
# A GPU's first quarter of an hour: everything this project does on CUDA, checked and measured
# in one run that ends within 8 minutes on an H100/H200, and one JSON file.
#
#   bash benchmarks/device_check.sh [--out PATH]       on the GPU machine
#   bash benchmarks/device_check.sh --dry-run [--out PATH]   the same parts on the CPU, tiny
#
# Parts, each under its own time limit (timeout), each run even when an earlier one failed:
#   install    wheels from .whl/ (benchmarks/device_wheels.sh fetches them where pip works) into
#              /tmp/fer_site, and the project itself, editable, without dependencies. Not in the
#              dry run.
#   gpu_tier   pytest -m gpu tests/gpu (the dry run: FER_GPU_TIER_DEVICE=cpu, the ResNet-18 and
#              loader tests only, to stay short).
#   bench_gpu  benchmarks/bench_gpu.py: network-only training images/s and model FLOP
#              utilisation (fp32, bf16, channels-last, torch.compile), inference images/s.
#   fer_train  a real fer-train (python -m fer_lightning.train) of resmasking_dropout1 on
#              data=synthetic at 224, bf16-mixed, channels-last, batch 64, 8 loader workers with
#              pinned memory, for a fixed number of steps: images/s end to end, loader
#              included, measured by benchmarks/train_speed.py (the dry run: resnet18 at 32 px,
#              a few steps on the CPU).
# The JSON (--out; default $OUT/device_check.json when $OUT is set, else ./device_check.json)
# holds every part's status, exit status, seconds and figures, the end of the log of any part
# that did not pass, and a summary (end to end beside network only). The exit status is 1 when
# a part failed. Logs stay in the work folder printed at the start.
set -u -o pipefail

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
OUT_JSON=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out)
            if [ $# -lt 2 ]; then
                echo "device_check.sh: --out needs a path" >&2
                exit 2
            fi
            OUT_JSON="$2"
            shift
            ;;
        --out=*) OUT_JSON="${1#--out=}" ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "device_check.sh: unknown argument '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done
if [ -z "$OUT_JSON" ]; then
    OUT_JSON="${OUT:+$OUT/}device_check.json"
fi
OUT_JSON="$(realpath -m "$OUT_JSON")"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
# Refused before anything is installed or written: the full check needs a CUDA GPU.
if [ "$DRY_RUN" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "device_check.sh: no CUDA GPU here (torch.cuda.is_available() is false);" \
        "--dry-run runs the same parts on the CPU." >&2
    exit 2
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
SITE=/tmp/fer_site
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
# The checkout first, then the carried wheels' packages (the machine's own stay where they are).
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
STARTED=$(date +%s)

# Time limits in seconds. On the GPU they add up to 440 (+5 s each to stop a part), so that the
# check ends within 8 minutes whatever happens; the dry run's are for a slow, shared CPU.
if [ "$DRY_RUN" = 1 ]; then
    BUDGET_TIER=420 BUDGET_BENCH=240 BUDGET_TRAIN=240
else
    # bench_gpu gets the most: torch.compile of the Residual Masking Network's training step
    # may take two minutes.
    BUDGET_INSTALL=30 BUDGET_TIER=150 BUDGET_BENCH=170 BUDGET_TRAIN=90
fi
echo "device_check: $([ "$DRY_RUN" = 1 ] && echo 'DRY RUN on the CPU' || echo 'on the GPU'); work folder $WORK"

# run_part NAME BUDGET COMMAND...: the command's output goes to $WORK/NAME.log; one line of
# parts.tsv records its status (passed, failed or timeout), exit status, seconds and budget.
run_part() {
    local name=$1 budget=$2
    shift 2
    echo "== $name (at most ${budget} s): $*"
    local start ms status rc seconds
    start=$(date +%s%N)
    timeout --kill-after=5 "$budget" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    seconds="$((ms / 1000)).$(((ms % 1000) / 100))"
    case $rc in
        0) status=passed ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$budget" >>"$WORK/parts.tsv"
    echo "   $name: $status (exit $rc) in $seconds s"
    if [ "$status" != passed ]; then
        tail -n 25 "$WORK/$name.log" | sed 's/^/   | /'
    fi
}

# ---------------------------------------------------------------- install
if [ "$DRY_RUN" = 0 ]; then
    # shellcheck disable=SC2016  # expanded by the inner bash
    run_part install "$BUDGET_INSTALL" env PY="$PY" SITE="$SITE" bash -c '
        set -e
        if compgen -G ".whl/*.whl" >/dev/null; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" .whl/*.whl
            echo "installed into $SITE: $(ls .whl | tr "\n" " ")"
        else
            echo "no .whl/ folder: nothing to install (benchmarks/device_wheels.sh makes it)"
        fi
        # The console scripts (fer-train ...); the checkout on PYTHONPATH serves without them.
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
            || echo "editable install failed: the parts run from the checkout (PYTHONPATH)"
        "$PY" -c "import hydra, omegaconf, albumentations, onnx, onnxruntime, torch
import fer_lightning.cli.train
print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"GPUs\",
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    '
fi

# ---------------------------------------------------------------- the gpu test tier
TIER=(-m pytest -m gpu tests/gpu -v -rA -p no:cacheprovider --junitxml="$WORK/gpu_tier.xml")
if [ "$DRY_RUN" = 1 ]; then
    run_part gpu_tier "$BUDGET_TIER" env FER_GPU_TIER_DEVICE=cpu "$PY" "${TIER[@]}" \
        -k "loader or resnet18-bf16"
else
    run_part gpu_tier "$BUDGET_TIER" env FER_GPU_TIER_DEVICE=cuda "$PY" "${TIER[@]}"
fi

# ---------------------------------------------------------------- network only: bench_gpu
if [ "$DRY_RUN" = 1 ]; then
    run_part bench_gpu "$BUDGET_BENCH" "$PY" benchmarks/bench_gpu.py --dry-run \
        --json "$WORK/bench_gpu.json"
else
    # Settings that would start after 80 s are skipped (torch.compile's comes last); one that
    # the time limit stops is recorded as failed, the rest of the JSON stays.
    run_part bench_gpu "$BUDGET_BENCH" "$PY" benchmarks/bench_gpu.py --warmup 5 --steps 20 \
        --budget-s 80 --json "$WORK/bench_gpu.json"
fi

# ---------------------------------------------------------------- end to end: fer-train
SPEED=(
    "+callbacks.train_speed._target_=train_speed.TrainSpeed"
    "+callbacks.train_speed.path=$WORK/train_speed.json"
    "paths.data_dir=$WORK/data"
    "hydra.run.dir=$WORK/fer_train_run"
    "test=false"
    "logger=none"
    "callbacks=none"
    "trainer.max_epochs=1"
    "trainer.num_sanity_val_steps=0"
    "trainer.limit_val_batches=1"
    "data=synthetic"
)
if [ "$DRY_RUN" = 1 ]; then
    run_part fer_train "$BUDGET_TRAIN" env PYTHONPATH="$REPO/benchmarks:$PYTHONPATH" \
        "$PY" -m fer_lightning.train model=resnet18 trainer=cpu "${SPEED[@]}" \
        data.input_size=32 data.batch_size=8 data.num_workers=0 \
        data.synthetic.train_per_class=8 data.synthetic.val_per_class=2 \
        data.synthetic.test_per_class=2 +trainer.max_steps=6 trainer.limit_train_batches=6 \
        +callbacks.train_speed.warmup_steps=2
else
    # 60 steps of 64 faces (the first 10 untimed); 4,200 synthetic training faces, so that
    # they all lie in one epoch. cudnn.benchmark as bench_gpu.py sets it.
    run_part fer_train "$BUDGET_TRAIN" env PYTHONPATH="$REPO/benchmarks:$PYTHONPATH" \
        "$PY" -m fer_lightning.train model=resmasking_dropout1 trainer=gpu "${SPEED[@]}" \
        data.input_size=224 data.batch_size=64 data.num_workers=8 data.pin_memory=true \
        data.persistent_workers=true data.synthetic.train_per_class=600 \
        data.synthetic.val_per_class=20 data.synthetic.test_per_class=10 \
        model.channels_last=true +trainer.benchmark=true +trainer.max_steps=60 \
        trainer.limit_train_batches=60 +callbacks.train_speed.warmup_steps=10
fi

# ---------------------------------------------------------------- the one JSON
ELAPSED=$(($(date +%s) - STARTED))
REPORT=("$WORK" "$OUT_JSON" --seconds "$ELAPSED")
if [ "$DRY_RUN" = 1 ]; then
    REPORT+=(--dry-run)
fi
"$PY" benchmarks/device_check_report.py "${REPORT[@]}"
status=$?
if [ ! -s "$OUT_JSON" ]; then
    # The report itself failed (no Python?): say so in the file the caller reads.
    mkdir -p "$(dirname "$OUT_JSON")"
    printf '{"check": "device_check", "ok": false, "error": "the report failed (exit %s); logs in %s"}\n' \
        "$status" "$WORK" >"$OUT_JSON"
    status=1
fi
echo "device_check: $([ "$status" = 0 ] && echo 'every part passed' || echo 'FAILED'); $ELAPSED s; logs in $WORK"
exit "$status"
