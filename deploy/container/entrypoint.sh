#!/bin/sh
# The image's entrypoint (behind tini): `serve` (the default) or `worker`, with sandlot's own flags after it;
# anything else runs as given (`sandlot run ...`, `bash`). Settings come from SANDLOT_* variables.
# The role is written down for the health check (sandlot-healthcheck).
set -eu

# Without --privileged the runtime mounts the container's own cgroups read-only, and sandlot makes a cgroup
# per box under them. With CAP_SYS_ADMIN (the smaller set of docs/deploy.md) we remount them writable: they
# are this container's own subtree (what --privileged gives), never the host's root. Skipped when writable.
for dir in $(awk '$5 ~ "^/sys/fs/cgroup" && $6 ~ /^ro/ && $0 ~ / - cgroup2? / {print $5}' /proc/self/mountinfo); do
    mount -o remount,bind,rw "$dir" ||
        echo "sandlot-entrypoint: $dir is read-only and cannot be remounted (needs CAP_SYS_ADMIN)" >&2
done

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
