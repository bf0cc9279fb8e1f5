#!/usr/bin/env bash
# The GPU pool measured in one run on one lent GPU (sized for an H200: under 10 minutes). Writes
# generator-gpu.json (and its log) into $OUT when set (the device tool's output folder), else bench/results:
#   1. bench/generator.py on CUDA: fp16, CUDA graphs of batch sizes 1..256 (server and raw runner), the raw
#      in-process sweep at batch sizes 1..1024, served with 1, 64 and 256 concurrent clients (4 load
#      processes, raw pixels), batching on and off; targets at 64 clients: served / raw >= 0.8,
#      batched / unbatched >= 10, a lone client >= 0.9 x unbatched;
#   2. bench/model_sweep.py: a random-weight StyleGAN2 at 256 and 1024 px, images/s and peak GPU memory per
#      batch size (fp16, CUDA graphs), added as the file's "model_sweep" section.
#
# Prepare once, here (a machine with PyPI access):   bash bench/gpu.sh --prepare
#   puts into .gpu/ (ignored by git) the wheels of the packages the device image lacks, pinned to this venv's
#   versions, and the default model file.
# Run on the device:                                  run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=590)
# Check without a GPU (tests/generator/test_gpu_bench.py):   bash bench/gpu.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
MODE=${1:-run}
CUDA_GRAPHS=1,2,4,8,16,32,64,128,256
# Packages the services import that the device image does not hold (it has torch, numpy, pillow, grpcio).
WHEELS="grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf googleapis-common-protos"

if [ "$MODE" = "--prepare" ]; then
  mkdir -p .gpu/wheels .gpu/models
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  pins=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $WHEELS)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/wheels $pins
  cp "$("$PY" -c 'from services.common import assets; print(assets.path_of("dcgan-digiface-64.pt"))')" .gpu/models/
  du -sh .gpu
  exit 0
fi

export PYTHONPATH="$ROOT:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/models ] && export IFGAN_MODELS_DIR="$ROOT/.gpu/models"
export PYTHONUNBUFFERED=1

if [ "$MODE" = "--dry-run" ]; then  # the same commands on the CPU, as a plan and a tiny sweep
  OUTDIR=${OUT:-$(mktemp -d)}
  "$PY" bench/generator.py --dry-run --device cpu --precision float16 --backend torch --max-batch-size 256 \
    --cuda-graphs "$CUDA_GRAPHS" --raw-batch-sizes 1,4,16,64,256,1024 --clients 1,64,256 --target-clients 64 \
    > "$OUTDIR/generator-plan.json"
  "$PY" bench/model_sweep.py --device cpu --threads 1 --resolutions 8 --batch-sizes 1,2 --seconds 0.05 \
    --out "$OUTDIR/model-sweep.json"
  echo "dry run: $OUTDIR"
  exit 0
fi

OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
if [ -d .gpu/wheels ]; then  # the device's Python 3.12 gets the packages its image lacks
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ifgan-site \
    .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/ifgan-site:$PYTHONPATH"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
set -o pipefail
timeout 420 "$PY" bench/generator.py --device cuda --precision float16 --backend torch --max-batch-size 256 \
  --cuda-graphs "$CUDA_GRAPHS" --raw-batch-sizes 1,4,16,64,256,1024 --sweep-seconds 2 \
  --clients 1,64,256 --target-clients 64 --load-processes 4 --rounds 3 --warmup 1 --duration 15 --format raw \
  --out "$OUTDIR/generator-gpu.json" 2>&1 | tee "$OUTDIR/generator-gpu.log"
timeout 150 "$PY" bench/model_sweep.py --device cuda --precision float16 --resolutions 256,1024 \
  --batch-sizes 1,2,4,8,16,32,64,128,256 --max-batch-1024 64 --seconds 2 \
  --into "$OUTDIR/generator-gpu.json" 2>&1 | tee -a "$OUTDIR/generator-gpu.log"
