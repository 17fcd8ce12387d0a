#!/bin/sh
# The image's entrypoint (behind tini): `serve` (the default) or `worker`, with sandlot's own flags after it;
# anything else runs as given (`sandlot run ...`, `bash`). Settings come from SANDLOT_* variables.
# The role is written down for the health check (sandlot-healthcheck).
set -eu
role="${1:-serve}"
case "$role" in
    serve | worker)
        [ "$#" -gt 0 ] && shift
        mkdir -p /run/sandlot-container
        echo "$role" >/run/sandlot-container/role
        exec /opt/sandlot/bin/sandlot "$role" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
