#!/usr/bin/env bash
# The checks to run whenever a GPU machine is lent (scripts/gpu_check.py says what they are), in under 5 minutes:
# every built-in profile on random:llava-video-7b-qwen2 in bfloat16 at 32/64/128 frames, sdpa's flash and
# memory-efficient kernels against its math kernel, bfloat16 against float32.
#
# The GPU machine has its own Python 3.12 and packages (an older transformers, no PyAV) and no network, so what is
# missing travels as wheels in .whl/ (git-ignored), built here beforehand:
#
#   scripts/gpu_check.sh --wheels          # here, with network: our wheel + transformers and what it needs (<= 64 MiB)
#   scripts/gpu_check.sh                   # on the GPU machine: unpack .whl/ into .gpu-site/, run the checks
#   scripts/gpu_check.sh --dry-run         # here, no GPU: the Python part with a tiny model on the CPU
#   PYTHON=python3.12 scripts/gpu_check.sh --rehearse   # the GPU machine's path (unpacked wheels) with --dry-run
#
# With the session's `run` tool: command "scripts/gpu_check.sh --out $OUT", carry [".whl"], timeout 420.
# Results: $OUT/gpu_check.json (or gpu-check-out/ without --out). Exit 0: all passed; 1: a check failed; 2: no GPU,
# or the wheels are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/.whl"
SITE="$ROOT/.gpu-site"
PYTHON="${PYTHON:-python3}"
MAX_WHEEL_BYTES=$((64 * 1024 * 1024))
# Packages the GPU machine has already, or that the check never imports: not carried.
NOT_CARRIED='^(numpy|torch|torchvision|nvidia_|triton|av|decord)'

build_wheels() {
    # The transformers release this checkout is tested with, and everything it needs, for CPython 3.12 on x86-64.
    local version
    version="$("$PYTHON" -c 'import transformers; print(transformers.__version__)')"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$ROOT"
    "$PYTHON" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest "$WHEELS" "transformers==$version" "psutil>=5.9" "num2words>=0.5" "pyyaml>=6"
    find "$WHEELS" -name '*.whl' | while read -r wheel; do
        if basename "$wheel" | grep -Eq "$NOT_CARRIED"; then rm -f "$wheel"; fi
    done
    local total
    total="$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)"
    ls -1 "$WHEELS"
    echo "gpu_check: $(ls "$WHEELS" | wc -l) wheels, $((total / 1024 / 1024)) MiB in $WHEELS"
    if [ "$total" -gt "$MAX_WHEEL_BYTES" ]; then
        echo "gpu_check: the wheels exceed 64 MiB, more than the GPU machine can be sent" >&2
        exit 2
    fi
}

unpack_wheels() {
    # Wheels are zip files: unpacked into a private folder that goes first on the path, they shadow the machine's
    # older packages for this check only (nothing installed, no pip needed). Skipped when already unpacked.
    if ! ls "$WHEELS"/framefusion-*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in $WHEELS; build them where there is network: scripts/gpu_check.sh --wheels" >&2
        exit 2
    fi
    local stamp
    stamp="$(cd "$WHEELS" && ls -l -- *.whl | md5sum | cut -d' ' -f1)"
    if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$SITE" && mkdir -p "$SITE"
        "$PYTHON" - "$SITE" "$WHEELS"/*.whl <<'EOF'
import sys
import zipfile

site, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
EOF
        echo "$stamp" > "$SITE/.stamp"
    fi
    # The checkout's own code replaces the wheel's, so that the check runs what is here now even when .whl/ is older
    # (the wheel still brings the installed metadata: the framefusion.families entry points; rebuild the wheels after
    # adding a family).
    rm -rf "$SITE/framefusion" "$SITE/framefusion_cli" "$SITE/framefusion_profiles"
    cp -r "$ROOT/framefusion" "$SITE/framefusion"
    cp -r "$ROOT/cli" "$SITE/framefusion_cli"
    cp -r "$ROOT/profiles" "$SITE/framefusion_profiles"
}

OUT_ARGS=()
MODE=gpu
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) MODE=wheels ;;
        --dry-run) MODE=dry ;;
        --rehearse) MODE=rehearse ;;
        --out) OUT_ARGS=(--out "$2"); shift ;;
        *) OUT_ARGS+=("$1") ;;
    esac
    shift
done

case "$MODE" in
    wheels)
        build_wheels ;;
    dry)
        # Here: the checkout's own environment, a tiny model, the CPU.
        exec "$PYTHON" "$ROOT/scripts/gpu_check.py" --dry-run "${OUT_ARGS[@]}" ;;
    gpu|rehearse)
        if [ "$MODE" = rehearse ]; then
            OUT_ARGS+=(--dry-run)
        elif ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            echo "gpu_check: no CUDA device is visible to $PYTHON's torch: run this on the GPU machine" \
                 "(scripts/gpu_check.sh --dry-run tries its Python part on the CPU)" >&2
            exit 2
        fi
        unpack_wheels
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
        # From another folder: the checkout's own framefusion/ must not stand in for the wheel.
        (cd "$SITE" && "$PYTHON" -c 'import framefusion, transformers
print("gpu_check: framefusion from", framefusion.__file__, "- transformers", transformers.__version__)')
        exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "${OUT_ARGS[@]}" ;;
esac
