#!/usr/bin/env bash
# The whole oxcast test suite, as one command: `tests/run.sh`.
#
# Installs what it needs on a fresh Debian/Ubuntu machine (ffmpeg and
# friends from apt), builds the Kubernetes control plane used by the cluster
# tests (cached under ~/.cache/oxcast), then runs every cargo test in the
# workspace. Heavy caches live outside the clone so a warm run takes minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxcast/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Every tool a test needs is installed here, and checked after: a tool
# still missing fails the run at once (a test never skips for lack of one,
# so a green run means every test ran).
#
# `need CHECK PACKAGE...`: CHECK is a command on PATH, or an absolute path
# that must exist; the Debian PACKAGEs provide it. `install_needed` installs
# what is missing with apt-get, then fails unless every CHECK passes.
need_apt=()
need_checks=()
have() {
    case $1 in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}
need() {
    local check=$1
    shift
    need_checks+=("$check")
    have "$check" || need_apt+=("$@")
}
install_needed() {
    if ((${#need_apt[@]})); then
        local sudo_cmd=()
        if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
        echo "tests/run.sh: installing ${need_apt[*]} with apt-get" >&2
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
    local missing=() check
    for check in "${need_checks[@]}"; do
        have "$check" || missing+=("$check")
    done
    if ((${#missing[@]})); then
        echo "tests/run.sh: still missing after apt-get install: ${missing[*]}" >&2
        exit 1
    fi
    need_apt=()
    need_checks=()
}

# Debian packages the tests drive for real: ffmpeg/ffprobe publish and
# verify media; curl for HTTP checks in scripts; python3 for tests/tools.sh
# and the README's key-token snippets (tests/hls_encryption.rs).
need ffmpeg ffmpeg
need ffprobe ffmpeg
need curl curl
need python3 python3
# The shellcheck linter checks the scripts below; musl-gcc builds the static binaries
# the container images ship (tests/tests/chart_images.rs, docker/).
need shellcheck shellcheck
need musl-gcc musl-tools
need readelf binutils
# The real node (tests/src/cluster/node.rs): containerd (and its ctr), runc
# and the CNI plugins run the pods; iptables and conntrack serve
# kube-proxy; iproute2 (ip), util-linux (unshare, nsenter) build its
# network; busybox-static is the test pods' image; gcc builds the pause image.
need containerd containerd
need ctr containerd
need runc runc
need /usr/lib/cni/bridge containernetworking-plugins
need iptables iptables
need conntrack conntrack
need ip iproute2
need nsenter util-linux
need unshare util-linux
need /bin/busybox busybox-static
need gcc gcc libc6-dev
# skopeo reads the OCI image tars back; the images carry the host's CA bundle
# (tests/tests/images_oci.rs, tests/src/images.rs).
need skopeo skopeo
need /etc/ssl/certs/ca-certificates.crt ca-certificates
# The storage fault tests (tests/tests/storage_faults.rs) mount a small
# tmpfs and make files immutable.
need mount mount
need chattr e2fsprogs
# bindfs (FUSE) gives tests/tests/storage_stall.rs a directory whose storage
# calls hang while the bindfs process is stopped (a stalled NFS volume).
need bindfs bindfs
# Real OBS Studio publishes in tests/tests/obs_e2e.rs, headless under Xvfb
# with Mesa's software GL (llvmpipe, in libgl1-mesa-dri).
need obs obs-studio libgl1-mesa-dri
need Xvfb xvfb
install_needed

# Kubernetes control plane for the cluster tests (skips what is cached).
if [ -x tests/cluster/build.sh ]; then
    tests/cluster/build.sh
fi

# The Rust target of the container images' static binaries.
musl_target="$(uname -m)-unknown-linux-musl"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$musl_target"; then
    rustup target add "$musl_target"
fi

# Helm 3 and 4, actionlint, hadolint (versioned under ~/.cache/oxcast/tools;
# silent when cached). The chart tests call them.
tests/tools.sh

# Lint the GitHub workflows (with shellcheck for their run: scripts) and
# every shell script of the repository.
"$(tests/tools.sh path actionlint)" -shellcheck "$(command -v shellcheck)"
# (SC1091: sourced files named at run time, such as versions.env, are not followed.)
shellcheck -e SC1091 tests/*.sh tests/kind/*.sh tests/cluster/*.sh docker/*.sh bench/*.sh .ci/run

# --- The player page in a real browser ---------------------------------------
# Debian's Chromium, driven by playwright-core (which never downloads a
# browser here), plays a live stream through the page and hls.js. npm
# packages are installed once per lockfile under ~/.cache/oxcast/npm and
# linked into the tree; player/dist is what `--player-assets` serves.
need chromium chromium
need node nodejs
need npm npm
install_needed
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "tests/run.sh: the browser test needs Node.js >= 20 (playwright-core); found $(node --version)" >&2
    exit 1
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

# `npm ci` for the package in DIR, into a cache keyed by its lockfile.
npm_ci_cached() {
    local dir=$1 cache stamp
    cache="$HOME/.cache/oxcast/npm/$(basename "$dir")"
    stamp=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    # (A stamp over an emptied node_modules, e.g. after `npm ci` through
    # the symlink below, is not a cache.)
    if [ "$(cat "$cache/.lockfile-sha256" 2>/dev/null)" != "$stamp" ] ||
        [ -z "$(ls -A "$cache/node_modules" 2>/dev/null)" ]; then
        rm -rf "$cache"
        mkdir -p "$cache"
        cp "$dir/package.json" "$dir/package-lock.json" "$cache/"
        (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$stamp" >"$cache/.lockfile-sha256"
    fi
    if [ -e "$dir/node_modules" ] && [ ! -L "$dir/node_modules" ]; then
        rm -rf "$dir/node_modules"
    fi
    ln -sfn "$cache/node_modules" "$dir/node_modules"
}
npm_ci_cached player
npm_ci_cached tests/browser
# Built before the cargo tests: the ingest image the node tests run
# (tests/src/images.rs) ships player/dist, as docker/Dockerfile does.
(cd player && node build.mjs)

cargo build --workspace --bins
cargo test --workspace --no-fail-fast

shellcheck bench/http.sh
node --test tests/browser/
