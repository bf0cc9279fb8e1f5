#!/bin/sh
# Container entry point (/usr/local/bin/ifgan-service): SERVICE [FLAGS...] runs `python -m services.SERVICE` after checking the
# model files' sha256 and refusing the placeholder auth token and Redis password; `models fetch|verify|list` manages
# the models folder (e.g. to fill a mounted volume); anything else is run as a command.
set -eu

PLACEHOLDER_TOKEN="CHANGE-ME-generate-with-openssl-rand-hex-32"

usage() { echo "usage: SERVICE [FLAGS...]  (generator|scorer|boundary|inversion|editor|studio), or models fetch|verify|list" >&2; }

[ $# -ge 1 ] || { usage; exit 64; }
service="$1"
shift
case "$service" in
  generator|scorer|boundary|inversion|editor|studio) ;;
  models) exec python -m services.common.assets "$@" ;;
  -h|--help) usage; exit 0 ;;
  *) exec "$service" "$@" ;;
esac

if [ "${IFGAN_AUTH_TOKEN:-}" = "$PLACEHOLDER_TOKEN" ]; then
  echo "refusing to start: IFGAN_AUTH_TOKEN is still the placeholder of deploy/k8s; put a real token in the" \
       "ifgan-auth Secret (openssl rand -hex 32)" >&2
  exit 78
fi
case "${IFGAN_REDIS_URL:-}" in
  *"$PLACEHOLDER_TOKEN"*)
    echo "refusing to start: the Redis password is still the placeholder of deploy/k8s; put a real one in the" \
         "ifgan-redis Secret (openssl rand -hex 32)" >&2
    exit 78 ;;
esac

# Asked for CUDA (the gpu overlay and compose.gpu.yml do): without a usable GPU the container stops here,
# saying so, instead of a server that falls back to the CPU and serves at a fraction of the speed.
case "${IFGAN_DEVICE:-}${IFGAN_PROVIDERS:+,$IFGAN_PROVIDERS}" in
  cuda*|*,CUDAExecutionProvider*)
    python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
      echo "refusing to start: CUDA was asked for (IFGAN_DEVICE=${IFGAN_DEVICE:-} IFGAN_PROVIDERS=${IFGAN_PROVIDERS:-})" \
           "but no CUDA device is usable here (no GPU allocated, no NVIDIA container runtime, or a driver older" \
           "than the image's CUDA needs); run the pod on a GPU node or set the device to cpu" >&2
      exit 69
    } ;;
esac

# Models baked into the image or mounted at $IFGAN_MODELS_DIR: a missing or altered file stops the
# container here with both checksums named, instead of a server that never becomes SERVING.
if [ "${VERIFY_MODELS:-1}" = "1" ]; then
  python -m services.common.assets verify >/dev/null || {
    echo "model files in ${IFGAN_MODELS_DIR:-?} failed verification; fill the folder with: ifgan models fetch" >&2
    exit 66
  }
fi

exec python -m "services.$service" "$@"
