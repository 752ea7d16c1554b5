#!/usr/bin/env bash
# Fetches, where pip reaches PyPI, the wheels that benchmarks/device_check.sh installs on a GPU
# machine without internet: this project's runtime dependencies that its image lacks.
#
#   bash benchmarks/device_wheels.sh [FOLDER]      (default: .whl at the top of the checkout)
#
# The image (CPython 3.12, x86-64, manylinux) already has torch, pytorch-lightning,
# torchmetrics, onnx, onnxruntime, pandas, numpy, scipy, opencv-python-headless, matplotlib,
# pillow, tqdm, tensorboard, pyyaml and packaging (the device README's list of the image's
# packages). Missing there: hydra-core and omegaconf (with antlr4-python3-runtime), and
# albumentations (with albucore, its SIMD string and math kernels stringzilla and simsimd, and
# pydantic with pydantic-core, annotated-types, typing-inspection and typing-extensions, which
# pydantic needs newer than the image may hold). The versions are those this project's tests
# pass with. Each is fetched without its dependencies (--no-deps): they are all named here, one
# version each. The folder is git-ignored (.git/info/exclude), so that it travels with the
# working tree as an ignored path the device call carries ('carry': [".whl"]).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FOLDER="${1:-.whl}"
PY="${PYTHON:-python3}"

# Pure Python: any platform's wheel.
PURE=(
    hydra-core==1.3.8
    omegaconf==2.3.1
    albumentations==2.0.8
    albucore==0.0.24
    pydantic==2.13.4
    annotated-types==0.7.0
    typing-inspection==0.4.2
    typing-extensions==4.16.0
)
# Compiled: CPython 3.12 on x86-64 Linux, as on the GPU machines.
BINARY=(
    pydantic-core==2.46.4
    stringzilla==5.3.2
    simsimd==6.5.16
)
# Published as a source archive only: built here into a py3-none-any wheel.
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)

mkdir -p "$FOLDER"
EXCLUDE="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [ -n "$EXCLUDE" ] && ! grep -qx "/$FOLDER/" "$EXCLUDE" 2>/dev/null; then
    mkdir -p "$(dirname "$EXCLUDE")"
    echo "/$FOLDER/" >>"$EXCLUDE"
fi

"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$FOLDER" "${PURE[@]}"
PLATFORMS=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$platform")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$FOLDER" "${BINARY[@]}"
"$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$FOLDER" "${SOURCE_ONLY[@]}"

echo "wheels in $FOLDER ($(du -sh "$FOLDER" | cut -f1)):"
ls -1 "$FOLDER"
