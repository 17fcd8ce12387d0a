#!/bin/sh
# The image's HEALTHCHECK. An API server: GET /readyz (200 once it takes work; a --no-worker API node also
# needs a live worker). A worker has no HTTP port: GET its metrics listener if SANDLOT_WORKER_METRICS_PORT
# is set; without it the worker is healthy while it runs (when it exits, tini and the container exit too).
set -eu
role="$(cat /run/sandlot-container/role 2>/dev/null || echo other)"
case "$role" in
    serve) exec curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:${SANDLOT_HTTP_PORT:-8080}/readyz" ;;
    worker)
        port="${SANDLOT_WORKER_METRICS_PORT:-0}"
        [ "$port" = 0 ] && exit 0
        exec curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:$port/metrics"
        ;;
    *) exit 0 ;;
esac
