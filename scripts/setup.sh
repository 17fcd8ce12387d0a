#!/usr/bin/env bash
# Install everything sandlot needs on a fresh Debian/Ubuntu machine (as root), then
#   setup.sh run   -> run the main job
#   setup.sh test  -> run the checks and the test suite (what CI runs)
# Only package registries are used: Debian/Ubuntu apt and PyPI.
set -euo pipefail

MODE="${1:-run}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SANDLOT_VENV:-$REPO/.venv}"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sandlot creates namespaces, cgroups and mounts)" >&2
    exit 2
fi

APT_PACKAGES=(
    bubblewrap libseccomp2 gcc g++ libc6-dev   # the jail and the static helper
    runsc                                       # gVisor: isolation level "gvisor"
    python3 python3-venv python3-dev            # sandlot itself
    golang-go nodejs default-jdk-headless bash  # languages offered out of the box
    procps iproute2 util-linux curl
    prometheus                                  # the metrics test scrapes a real server
    chromium                                    # the playground tests drive it (via Playwright)
    redis-server                                # the Redis broker's tests start their own
    hyperfine                                   # benchmarks/cli_startup.py times the CLI with it
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=/usr/bin/python3
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[dev]"

case "$MODE" in
    run)
        # The main job: the server (HTTP on :8080, gRPC on :50051), embedded mode.
        # Listens on loopback unless SANDLOT_HOST says otherwise; stop it with Ctrl-C or SIGTERM.
        exec "$VENV/bin/sandlot" serve "${@:2}"
        ;;
    test)
        cd "$REPO"
        "$VENV/bin/ruff" check src tests benchmarks
        "$VENV/bin/ruff" format --check src tests benchmarks
        "$VENV/bin/mypy"
        set +e
        "$VENV/bin/pytest" "${@:2}"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "setup.sh: pytest collected no tests; that is a failure here" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    *)
        echo "usage: setup.sh run|test [pytest args...]" >&2
        exit 2
        ;;
esac
