#!/usr/bin/env bash
# Install everything sandlot needs on a fresh Debian/Ubuntu machine (as root), then
#   setup.sh run   -> run the main job
#   setup.sh test  -> run the checks and the test suite (what CI runs)
#   setup.sh image [podman build args...]  -> the wheel (dist/), then the container image (Containerfile)
#   setup.sh test-deploy [pytest args...]  -> the deploy tier: builds and runs the image for real (slow)
# Only package registries are used: Debian/Ubuntu apt, PyPI and npm (the /docs page, the playground's editor).
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
    hey                                         # the HTTP load generator of benchmarks/
    hyperfine                                   # benchmarks/cli_startup.py times the CLI with it
    strace                                      # ... and times each phase of a run (--phases)
    mmdebstrap                                  # sandlot env build: a Debian root from Debian's registry
    busybox-static                              # the environment tests build their images around it
    podman runc                                 # the environment tests import images podman saved
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# npm builds the playground's editor; Debian ships it apart from nodejs (NodeSource's nodejs includes it).
command -v npm >/dev/null 2>&1 || missing+=(npm)
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
# The client library is its own distribution (clients/python, only httpx); the CLI's submit/result use it.
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO/clients/python"

# The API docs page (/docs): Swagger UI from npm, pinned by web/apidocs/package-lock.json. Only the two
# files the page serves are copied into the package (src/sandlot/api/http/docs_assets, git-ignored).
# --ignore-scripts: no install-time code runs (swagger-ui-dist's one dependency is a telemetry hook).
# npm ci runs again only when the lock file changed, so a re-run needs no network.
APIDOCS="$REPO/web/apidocs"
APIDOCS_OUT="$REPO/src/sandlot/api/http/docs_assets"
if ! cmp -s "$APIDOCS/package-lock.json" "$APIDOCS/node_modules/.sandlot-installed-lock"; then
    (cd "$APIDOCS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$APIDOCS/package-lock.json" "$APIDOCS/node_modules/.sandlot-installed-lock"
fi
mkdir -p "$APIDOCS_OUT"
for asset in swagger-ui-bundle.js swagger-ui.css; do
    install -C -m 0644 "$APIDOCS/node_modules/swagger-ui-dist/$asset" "$APIDOCS_OUT/$asset"
done

# The playground's code editor: CodeMirror 6 and esbuild, pinned by web/playground/package-lock.json,
# bundled into the package's static files (git-ignored); rebuilt only when its inputs changed.
# --ignore-scripts: no install script from the registry runs as root (esbuild works without its own).
EDITOR_DIR="$REPO/web/playground"
EDITOR_BUNDLE="$REPO/src/sandlot/api/http/static/bundle/editor.js"
if [ ! -f "$EDITOR_BUNDLE" ] || [ -n "$(find "$EDITOR_DIR/package.json" "$EDITOR_DIR/package-lock.json" "$EDITOR_DIR/src" -newer "$EDITOR_BUNDLE" -print -quit)" ]; then
    echo "setup.sh: building the playground's editor (npm ci, esbuild)"
    (cd "$EDITOR_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && npm run --silent build)
fi

case "$MODE" in
    run)
        # The main job: the server (HTTP on :8080, gRPC on :50051), embedded mode.
        # Listens on loopback unless SANDLOT_HOST says otherwise; stop it with Ctrl-C or SIGTERM.
        exec "$VENV/bin/sandlot" serve "${@:2}"
        ;;
    test)
        cd "$REPO"
        "$VENV/bin/ruff" check src tests benchmarks clients
        "$VENV/bin/ruff" format --check src tests benchmarks clients
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
    image)
        # The wheel from this checkout (with the editor and /docs assets built above), then the image.
        # podman here: `--runtime runc` (Debian's crun refuses a hybrid cgroup host), `--format docker`
        # (OCI images drop HEALTHCHECK). Add -t NAME, --build-arg BASE=... and the like as you need.
        cd "$REPO"
        rm -f dist/sandlot-*.whl
        "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w dist .
        exec podman --runtime runc build --format docker -f Containerfile "${@:2}" .
        ;;
    test-deploy)
        # The deploy tier (tests/deploy/): mmdebstrap base, the image, containers run for real. Slow.
        cd "$REPO"
        exec "$VENV/bin/pytest" -m deploy "${@:2}"
        ;;
    *)
        echo "usage: setup.sh run|test|image|test-deploy [args...]" >&2
        exit 2
        ;;
esac
