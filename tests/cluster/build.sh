#!/usr/bin/env bash
# Builds the Kubernetes control plane the cluster tests run as plain processes:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
# kwok (plus kwok-stages.yaml, its default behaviour), and the real node's
# kubelet and kube-proxy (same k8s.io/kubernetes version and wrapper module),
# from their Go modules (versions in versions.env), into
#   ${OXCAST_K8S_CACHE:-~/.cache/oxcast/k8s}/<KUBERNETES_VERSION>/bin
#
# Why from source: kind needs Docker and the upstream release tarballs are not
# reachable from every machine this project runs on; the Go module proxy is.
#
# Idempotent: a binary is rebuilt only when it is missing or its stamp names
# another module version. A warm run takes well under a second and needs no Go.
# Concurrent runs (several test binaries at once) serialise on a lock file.
#
# Output contract: the bin directory is the only line written to stdout; all
# progress goes to stderr. The Rust harness (tests/src/cluster) relies on that.
#
# Usage: tests/cluster/build.sh [--print-bin-dir | --check | --help]
#   (no argument)    build what is missing, then print the bin directory
#   --print-bin-dir  print the bin directory without building anything
#   --check          exit 0 when everything is built, 1 otherwise (no build)
#
# Environment:
#   OXCAST_K8S_CACHE       cache root (default ~/.cache/oxcast/k8s)
#   OXCAST_K8S_BUILD_NICE  niceness of the Go builds (default 10), so they
#                          leave CPU to interactive work on a small machine
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
# GOCACHE / GOMODCACHE / GOPROXY keep their usual Go defaults.
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$script_dir/versions.env"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

mode=build
case "${1:-}" in
    "") ;;
    --print-bin-dir) mode=print ;;
    --check) mode=check ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

: "${KUBERNETES_VERSION:?versions.env must set KUBERNETES_VERSION}"
: "${ETCD_VERSION:?versions.env must set ETCD_VERSION}"
: "${KWOK_VERSION:?versions.env must set KWOK_VERSION}"

cache_root=${OXCAST_K8S_CACHE:-$HOME/.cache/oxcast/k8s}
version_dir=$cache_root/$KUBERNETES_VERSION
bin_dir=$version_dir/bin
work_dir=$version_dir/work

k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
# The real node (tests/src/cluster/node.rs); containerd, runc and the CNI
# plugins come from Debian packages (tests/run.sh installs them).
k8s_node_binaries=(kubelet kube-proxy)
k8s_stamp="k8s.io/kubernetes@$KUBERNETES_VERSION"
etcd_stamp="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
kwok_stamp="sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

log() {
    printf '[oxcast k8s build] %s\n' "$*" >&2
}

# is_built NAME STAMP: the binary exists and was built from STAMP.
is_built() {
    local name=$1 stamp=$2
    [[ -x $bin_dir/$name && -f $bin_dir/.$name.stamp ]] &&
        [[ $(<"$bin_dir/.$name.stamp") == "$stamp" ]]
}

# all_stamped STAMP NAME...: every NAME is built from STAMP.
all_stamped() {
    local stamp=$1 b
    shift
    for b in "$@"; do
        is_built "$b" "$stamp" || return 1
    done
}

k8s_built() {
    all_stamped "$k8s_stamp" "${k8s_binaries[@]}"
}

k8s_node_built() {
    all_stamped "$k8s_stamp" "${k8s_node_binaries[@]}"
}

# kwok ships no built-in behaviour: its Stages (node turns Ready and
# heartbeats, pod turns Running/Ready, deletion completes) come as YAML in its
# module. build_kwok collects upstream's default "fast" set into this file,
# which the harness passes to kwok with --config.
kwok_stages=kwok-stages.yaml

kwok_built() {
    is_built kwok "$kwok_stamp" && [[ -f $bin_dir/$kwok_stages && -f $bin_dir/.$kwok_stages.stamp ]] &&
        [[ $(<"$bin_dir/.$kwok_stages.stamp") == "$kwok_stamp" ]]
}

# ---- MetalLB (LoadBalancer addresses; issue 11 item 3) ---------------------
# MetalLB's controller assigns Service type LoadBalancer addresses from an
# IPAddressPool. Only the controller is built: the node harness routes the pool
# into the node, where kube-proxy handles LB addresses, so no speaker (ARP/BGP)
# and no memberlist secret are needed. Its go.mod has no replace directives,
# so a plain versioned `go install` builds exactly upstream's dependency set
# (about 3.5 min on 2 cores with a cold Go cache).
# The CRDs come from the same module version (config/crd/bases, in the order
# config/crd/kustomization.yaml lists them), unpatched: the bases carry no
# conversion webhook (upstream adds the bgppeers one with a kustomize patch,
# which is deliberately not applied; nothing serves webhooks here).
metallb_stamp="go.universe.tf/metallb/controller@${METALLB_VERSION:?versions.env must set METALLB_VERSION}"
metallb_crds=metallb-crds.yaml

metallb_built() {
    is_built metallb-controller "$metallb_stamp" && [[ -f $bin_dir/$metallb_crds && -f $bin_dir/.$metallb_crds.stamp ]] &&
        [[ $(<"$bin_dir/.$metallb_crds.stamp") == "$metallb_stamp" ]]
}

build_metallb() {
    local start=$SECONDS
    local dir=$work_dir/metallb
    log "building the MetalLB controller from $metallb_stamp"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && GOBIN=$dir nice -n "$nice_level" "$GO" install -trimpath -ldflags "-s -w" \
        "go.universe.tf/metallb/controller@$METALLB_VERSION")
    install_binary "$dir/controller" metallb-controller "$metallb_stamp"

    local mod_dir crd_dir file
    mod_dir=$(cd "$dir" && "$GO" mod download -json "go.universe.tf/metallb@$METALLB_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    crd_dir=$mod_dir/config/crd
    if [[ ! -f $crd_dir/kustomization.yaml ]]; then
        log "MetalLB CRDs not found under $crd_dir"
        exit 1
    fi
    {
        printf '# MetalLB CRDs collected by tests/cluster/build.sh from %s (config/crd/bases).\n' "$metallb_stamp"
        while read -r file; do
            printf -- '---\n'
            # The bases start with their own document marker; ours separates.
            sed '/^---$/d' "$crd_dir/$file"
            printf '\n'
        done < <(sed -n 's/^- \(bases\/.*\.yaml\)$/\1/p' "$crd_dir/kustomization.yaml")
    } >"$dir/$metallb_crds"
    if ! grep -q '^  name: ipaddresspools\.metallb\.io$' "$dir/$metallb_crds"; then
        log "no IPAddressPool CRD in $crd_dir/bases"
        exit 1
    fi
    if grep -q 'strategy: Webhook' "$dir/$metallb_crds"; then
        log "a MetalLB CRD in $crd_dir/bases asks for a conversion webhook, which nothing here serves"
        exit 1
    fi
    install_binary "$dir/$metallb_crds" "$metallb_crds" "$metallb_stamp"
    log "MetalLB controller built in $((SECONDS - start))s"
}
# ---- end MetalLB -------------------------------------------------------------

all_built() {
    k8s_built && is_built etcd "$etcd_stamp" && kwok_built && k8s_node_built && metallb_built # MetalLB
}

case $mode in
    print)
        printf '%s\n' "$bin_dir"
        exit 0
        ;;
    check)
        if all_built; then exit 0; else exit 1; fi
        ;;
esac

if all_built; then
    printf '%s\n' "$bin_dir"
    exit 0
fi

mkdir -p "$bin_dir" "$work_dir"

# One builder at a time per version; a second caller waits, then finds the
# binaries built and skips them.
exec 9>"$version_dir/.build.lock"
if ! flock -n 9; then
    log "another build holds $version_dir/.build.lock; waiting for it"
    flock 9
fi

if [[ -z ${GO:-} ]]; then
    if command -v go >/dev/null 2>&1; then
        GO=go
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        log "no Go toolchain found (set GO=/path/to/go)"
        exit 1
    fi
fi

# Use exactly the local toolchain (no automatic download of another one) and
# build static binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0
nice_level=${OXCAST_K8S_BUILD_NICE:-10}
log "using $("$GO" version)"

gorun() {
    nice -n "$nice_level" "$GO" "$@"
}

# install_binary SRC NAME STAMP: move a fresh build into place atomically,
# then record which module version it came from.
install_binary() {
    local src=$1 name=$2 stamp=$3
    mv -f "$src" "$bin_dir/$name"
    printf '%s\n' "$stamp" >"$bin_dir/.$name.stamp.tmp"
    mv -f "$bin_dir/.$name.stamp.tmp" "$bin_dir/.$name.stamp"
}

# write_wrapper_module DIR MODULE: an empty main module in DIR. Kubernetes and
# etcd cannot be built with `go install pkg@version` because their go.mod
# files carry replace directives to local paths; a wrapper module that
# requires them (and pins what those replaces pointed at) builds the same code.
write_wrapper_module() {
    local dir=$1 module=$2
    rm -rf "$dir"
    mkdir -p "$dir"
    printf 'module %s\n\ngo 1.26.0\n' "$module" >"$dir/go.mod"
}

# build_kubernetes WORK_SUBDIR BINARY...: builds k8s.io/kubernetes/cmd/BINARY
# for each BINARY in one wrapper module under $work_dir/WORK_SUBDIR. The
# control plane and the node use separate wrapper directories (so one can be
# rebuilt without the other) but the same Go build cache, so the second build
# compiles little more than its own main packages.
build_kubernetes() {
    local start=$SECONDS
    local dir=$work_dir/$1
    shift
    local binaries=("$@")
    local minor_patch=${KUBERNETES_VERSION#v1.}
    local staging_version=v0.$minor_patch
    local major=1 minor=${minor_patch%%.*}
    log "building ${binaries[*]} from $k8s_stamp (staging modules at $staging_version)"

    write_wrapper_module "$dir" oxcast.invalid/kubernetes-build
    local k8s_gomod
    k8s_gomod=$(cd "$dir" && gorun mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    if [[ ! -f $k8s_gomod ]]; then
        log "could not locate the go.mod of k8s.io/kubernetes@$KUBERNETES_VERSION"
        exit 1
    fi

    # Every staging module k8s.io/kubernetes requires at the placeholder
    # version v0.0.0 is published as k8s.io/X v0.<minor>.<patch>.
    local staging_modules
    staging_modules=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$k8s_gomod" | sort -u)
    if [[ -z $staging_modules ]]; then
        log "no staging modules found in $k8s_gomod"
        exit 1
    fi
    local edit_args=(-require "k8s.io/kubernetes@$KUBERNETES_VERSION")
    local m
    for m in $staging_modules; do
        edit_args+=(-replace "$m=$m@$staging_version")
    done
    (cd "$dir" && gorun mod edit "${edit_args[@]}")
    log "pinned $(wc -w <<<"$staging_modules") staging modules"

    local pkgs=()
    local b
    for b in "${binaries[@]}"; do
        pkgs+=("k8s.io/kubernetes/cmd/$b")
    done
    (cd "$dir" && gorun get "${pkgs[@]/%/@$KUBERNETES_VERSION}")

    # Version metadata the upstream build stamps in, so /version, kubectl
    # version skew checks and the compatibility-version logic see a real version.
    local build_date ldflags="-s -w" p
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
    done

    local out=$dir/out
    mkdir -p "$out"
    (cd "$dir" && gorun build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
    for b in "${binaries[@]}"; do
        install_binary "$out/$b" "$b" "$k8s_stamp"
    done
    log "${binaries[*]} built in $((SECONDS - start))s"
}

build_etcd() {
    local start=$SECONDS
    local dir=$work_dir/etcd
    log "building etcd from $etcd_stamp"
    write_wrapper_module "$dir" oxcast.invalid/etcd-build
    (cd "$dir" && gorun get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    (cd "$dir" && gorun build -trimpath -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3)
    install_binary "$dir/etcd" etcd "$etcd_stamp"
    log "etcd built in $((SECONDS - start))s"
}

build_kwok() {
    local start=$SECONDS
    local dir=$work_dir/kwok
    log "building kwok from $kwok_stamp"
    rm -rf "$dir"
    mkdir -p "$dir"
    # kwok's go.mod has no local replaces, so a plain versioned install works.
    (cd "$dir" && GOBIN=$dir nice -n "$nice_level" "$GO" install -trimpath -ldflags "-s -w" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
    install_binary "$dir/kwok" kwok "$kwok_stamp"

    # The default stage set is what upstream's kustomize/stage/fast lists:
    # each entry is a directory whose kustomization lists the Stage files.
    local mod_dir stage_root sub file
    mod_dir=$(cd "$dir" && "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    stage_root=$mod_dir/kustomize/stage
    if [[ ! -f $stage_root/fast/kustomization.yaml ]]; then
        log "kwok stage definitions not found under $stage_root"
        exit 1
    fi
    {
        printf '# kwok Stages collected by tests/cluster/build.sh from %s (kustomize/stage/fast).\n' "$kwok_stamp"
        while read -r sub; do
            while read -r file; do
                printf -- '---\n'
                cat "$stage_root/fast/$sub/$file"
                # Upstream files may lack a final newline; keep "---" on its own line.
                printf '\n'
            done < <(sed -n 's/^- //p' "$stage_root/fast/$sub/kustomization.yaml")
        done < <(sed -n 's/^- //p' "$stage_root/fast/kustomization.yaml")
    } >"$dir/$kwok_stages"
    if ! grep -q '^kind: Stage' "$dir/$kwok_stages"; then
        log "no kwok Stage found in $stage_root/fast"
        exit 1
    fi
    install_binary "$dir/$kwok_stages" "$kwok_stages" "$kwok_stamp"
    log "kwok built in $((SECONDS - start))s"
}

total_start=$SECONDS
is_built etcd "$etcd_stamp" || build_etcd
k8s_built || build_kubernetes kubernetes "${k8s_binaries[@]}"
kwok_built || build_kwok
k8s_node_built || build_kubernetes kubernetes-node "${k8s_node_binaries[@]}"
metallb_built || build_metallb # MetalLB
log "done in $((SECONDS - total_start))s: $bin_dir"
printf '%s\n' "$bin_dir"
