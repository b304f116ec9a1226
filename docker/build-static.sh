#!/usr/bin/env bash
# Builds the static (musl) release binaries that the container images ship,
# and lays them out under OUT exactly as the images hold them:
#
#   OUT/usr/local/bin/oxcast-ingest
#   OUT/usr/local/bin/oxcast-operator
#   OUT/usr/share/oxcast/player/     the player page assets, when player/dist
#                                    is built (the Dockerfile builds them in
#                                    a node stage of its own)
#   OUT/var/lib/oxcast/              the ingest image's working directory
#
# docker/Dockerfile runs this script, and so does the test that runs the
# binaries from an otherwise empty root (tests/tests/chart_images.rs), so
# both see binaries built with the same flags.
#
# Usage: docker/build-static.sh OUT
# OXCAST_BUILD_LOCKED=0 drops --locked (for a work tree whose Cargo.lock is
# being updated; it changes no compiler flag). The Dockerfile keeps it.
# Needs the Rust target x86_64-unknown-linux-musl (aarch64 on arm64 hosts)
# and musl-gcc (Debian: musl-tools) for the C parts of ring.
set -euo pipefail

if [ $# -ne 1 ] || [ "${1:0:1}" = "-" ]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
fi
out=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

case $(uname -m) in
x86_64 | amd64) target=x86_64-unknown-linux-musl ;;
aarch64 | arm64) target=aarch64-unknown-linux-musl ;;
*)
    echo "docker/build-static.sh: unsupported architecture $(uname -m)" >&2
    exit 1
    ;;
esac
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# Static, stripped of DWARF (symbol names stay for backtraces), same
# optimisation as the workspace's release profile. crt-static is the musl
# default; spelled out so nobody turns it off by accident.
export CARGO_PROFILE_RELEASE_STRIP=debuginfo
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"
locked=(--locked)
if [ "${OXCAST_BUILD_LOCKED:-1}" = 0 ]; then locked=(); fi
cargo build "${locked[@]}" --release --target "$target" -p oxcast-ingest -p oxcast-operator

mkdir -p "$out/usr/local/bin" "$out/usr/share/oxcast/player" "$out/var/lib/oxcast"
for bin in oxcast-ingest oxcast-operator; do
    src=$target_dir/$target/release/$bin
    # A dynamic executable names its loader in a PT_INTERP header; a static
    # one has none and runs from an empty root.
    if LC_ALL=C readelf --program-headers "$src" | grep -q INTERP; then
        echo "docker/build-static.sh: $src is dynamically linked" >&2
        exit 1
    fi
    install -m 0755 "$src" "$out/usr/local/bin/$bin"
done

# The player page's hls.js bundle (`npm ci && npm run build` in player/),
# served from --player-assets / OXCAST_PLAYER_ASSETS.
if [ -d player/dist ]; then
    cp -R player/dist/. "$out/usr/share/oxcast/player/"
fi
