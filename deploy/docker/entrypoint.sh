#!/bin/sh
# Container entry point (/usr/local/bin/ifgan-service): SERVICE [FLAGS...] runs `python -m services.SERVICE` after checking the
# model files' sha256 and refusing the placeholder auth token and Redis password; `models fetch|verify|list` manages
# the models folder (e.g. to fill a mounted volume); anything else is run as a command.
set -eu

PLACEHOLDER_TOKEN="CHANGE-ME-generate-with-openssl-rand-hex-32"

usage() { echo "usage: SERVICE [FLAGS...]  (generator|scorer|boundary|inversion|editor), or models fetch|verify|list" >&2; }

[ $# -ge 1 ] || { usage; exit 64; }
service="$1"
shift
case "$service" in
  generator|scorer|boundary|inversion|editor) ;;
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

# Models baked into the image or mounted at $IFGAN_MODELS_DIR: a missing or altered file stops the
# container here with both checksums named, instead of a server that never becomes SERVING.
if [ "${VERIFY_MODELS:-1}" = "1" ]; then
  python -m services.common.assets verify >/dev/null || {
    echo "model files in ${IFGAN_MODELS_DIR:-?} failed verification; fill the folder with: ifgan models fetch" >&2
    exit 66
  }
fi

exec python -m "services.$service" "$@"
