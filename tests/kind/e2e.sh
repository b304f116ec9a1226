#!/usr/bin/env bash
# End-to-end test of oxcast on a real Kubernetes cluster: install the chart,
# create a LiveApplication, publish a live stream to its LoadBalancer address
# with ffmpeg, and fetch the playlist and every segment back over HTTP.
#
# It works on any cluster the current kube context (or --context) points at:
# kind in CI (.github/workflows/e2e-kind.yml creates one), or a real cluster.
# The cluster needs LoadBalancer Services that this machine can reach.
#
# Usage: tests/kind/e2e.sh [OPTIONS] COMMAND [ARGS]
#
# Commands:
#   all                  install, then the minimal example (and the scale-out
#                        example with --scale-out); dumps diagnostics on failure
#   install              helm upgrade --install the chart, wait for the operator
#   minimal              examples/minimal.yaml: wait Ready, stream, verify
#   scale-out            examples/scale-out.yaml (needs a default StorageClass
#                        with ReadWriteMany volumes): wait Ready, stream, verify
#   kind-rwx-storage NODE
#                        single-node kind only: make a hostPath ReadWriteMany
#                        volume on node container NODE the default storage
#   host-rwx-storage     single-node cluster whose node runs on this machine
#                        (the test harness's node): the same with a local
#                        directory
#   stream-verify RTMP_APP_URL HTTP_BASE_URL
#                        publish to RTMP_APP_URL/<key>, then verify the HLS
#                        output under HTTP_BASE_URL (no cluster needed)
#   verify-url PLAYLIST_URL
#                        verify an ended HLS playlist and its segments over
#                        HTTP (what stream-verify does after publishing)
#   verify-local         run `oxcast-ingest run` on 127.0.0.1 (port 0) and
#                        stream-verify against it (no cluster needed)
#   dump                 describe, events and logs of everything under test
#   cleanup              delete the test namespace and uninstall the chart
#
# Options:
#   --context NAME           kube context (default: the current one)
#   --namespace NS           namespace of the LiveApplications (default: oxcast-e2e)
#   --release NAME           Helm release (default: oxcast)
#   --release-namespace NS   namespace of the operator (default: oxcast-system)
#   --operator-image IMAGE   operator image (default: the chart's)
#   --ingest-image IMAGE     ingest image (default: the chart's)
#   --duration SECONDS       length of the test stream (default: 30; verify-local: 6)
#   --stream-key KEY         stream key to publish (default: e2e)
#   --path-prefix PATH       URL path of the HLS tree (default: /live)
#   --playlist-length SECONDS
#                            the live playlist's window (default: 30; verify-local: 10)
#   --timeout SECONDS        how long to wait for each condition (default: 300)
#   --ingest-bin PATH        oxcast-ingest for verify-local (default: the cargo
#                            build in $CARGO_TARGET_DIR, else PATH)
#   --scale-out              `all` also runs the scale-out example
#   --rwx-dir DIR            directory behind the *-rwx-storage volume
#                            (default: /var/local/oxcast-rwx)
#   -h, --help               this text
#
# Needs: kubectl and helm (cluster commands), ffmpeg, ffprobe and curl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

context=""
namespace=oxcast-e2e
release=oxcast
release_namespace=oxcast-system
operator_image=""
ingest_image=""
duration=""
stream_key=e2e
path_prefix=/live
playlist_length=""
timeout=300
ingest_bin=""
scale_out=false
# The directory behind the single-node ReadWriteMany volume.
rwx_dir=/var/local/oxcast-rwx

work=""
cleanup_pids=()

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "e2e: $*" >&2
    exit 1
}

usage_error() {
    echo "e2e: $*" >&2
    echo "Run 'tests/kind/e2e.sh --help' for usage." >&2
    exit 2
}

log() { echo "e2e: $*" >&2; }

positive_int() {
    [[ $2 =~ ^[1-9][0-9]*$ ]] || usage_error "$1 must be a positive integer, got '$2'"
}

dump_on_failure=false

on_exit() {
    local status=$? pid
    if [ "$status" -ne 0 ] && $dump_on_failure; then
        log "failed (status $status); diagnostics follow"
        cmd_dump >&2 || true
    fi
    for pid in "${cleanup_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap on_exit EXIT

workdir() {
    if [ -z "$work" ]; then work=$(mktemp -d "${TMPDIR:-/tmp}/oxcast-e2e.XXXXXX"); fi
}

kc() {
    if [ -n "$context" ]; then
        kubectl --context "$context" "$@"
    else
        kubectl "$@"
    fi
}

hm() {
    if [ -n "$context" ]; then
        helm --kube-context "$context" "$@"
    else
        helm "$@"
    fi
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (needed by this command)"
    done
}

# Runs "$@" until it succeeds, for at most $1 seconds (re-checking each second).
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 1
    done
}

# --- images ---------------------------------------------------------------

# Splits IMAGE into repository and tag (or digest): "host:5000/a/b:t" -> "host:5000/a/b" "t".
split_image() {
    local image=$1 last=${1##*/}
    if [[ $image == *@* ]]; then
        printf '%s\n%s\n' "${image%@*}" "@${image#*@}"
    elif [[ $last == *:* ]]; then
        printf '%s\n%s\n' "${image%:*}" "${image##*:}"
    else
        printf '%s\n%s\n' "$image" ""
    fi
}

image_args() {
    local key=$1 image=$2 parts
    [ -n "$image" ] || return 0
    mapfile -t parts < <(split_image "$image")
    printf '%s\n' --set "$key.repository=${parts[0]}"
    if [[ ${parts[1]} == @* ]]; then
        printf '%s\n' --set "$key.digest=${parts[1]#@}"
    elif [ -n "${parts[1]}" ]; then
        printf '%s\n' --set "$key.tag=${parts[1]}"
    fi
}

# --- cluster commands -----------------------------------------------------

cmd_install() {
    need kubectl helm
    local args=()
    mapfile -t args < <(image_args operator.image "$operator_image"; image_args ingest.image "$ingest_image")
    log "installing release $release into $release_namespace"
    hm upgrade --install "$release" "$repo/charts/oxcast" \
        --namespace "$release_namespace" --create-namespace \
        --wait --timeout "${timeout}s" "${args[@]}"
    # The chart names the operator Deployment <release>-oxcast, or just
    # <release> when the release name contains "oxcast" (the default release
    # "oxcast" gives Deployment "oxcast"): find it by its labels, never by name.
    local deployment
    deployment=$(kc -n "$release_namespace" get deployments \
        -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component=operator" -o name)
    [ -n "$deployment" ] || die "release $release has no operator Deployment in namespace $release_namespace"
    [ "$(wc -l <<<"$deployment")" -eq 1 ] || die "release $release has several operator Deployments: $deployment"
    kc -n "$release_namespace" rollout status "$deployment" --timeout "${timeout}s"
    kc wait --for=condition=Established crd/liveapplications.live.oxcast.dev --timeout "${timeout}s"
}

ensure_namespace() {
    kc get namespace "$namespace" >/dev/null 2>&1 || kc create namespace "$namespace"
}

rtmp_url_of() {
    kc get -n "$namespace" liveapplication "$1" -o jsonpath='{.status.rtmpUrl}'
}

has_rtmp_url() {
    local url
    url=$(rtmp_url_of "$1" 2>/dev/null) && [[ $url == rtmp://* ]]
}

# Applies an example and waits until its LiveApplication is Ready with an RTMP URL.
apply_example() {
    local file=$1 app=$2
    ensure_namespace
    log "applying $file in namespace $namespace"
    kc apply -n "$namespace" -f "$file"
    kc wait -n "$namespace" "liveapplication/$app" --for=condition=Ready --timeout="${timeout}s"
    wait_for "$timeout" "status.rtmpUrl of $app" has_rtmp_url "$app"
    kc get -n "$namespace" liveapp "$app"
    log "$app is Ready at $(rtmp_url_of "$app")"
}

# Port-forwards Service $1 port $2 to a free local port and sets
# forward_url=http://127.0.0.1:PORT. Not for $(...): the kubectl process must
# belong to this shell so on_exit stops it.
forward_url=""
port_forward() {
    local svc=$1 port=$2 out
    workdir
    out="$work/port-forward-$svc.log"
    kc port-forward -n "$namespace" "service/$svc" ":$port" >"$out" 2>&1 &
    cleanup_pids+=("$!")
    wait_for 60 "kubectl port-forward to service/$svc" grep -q '^Forwarding from 127.0.0.1:' "$out"
    local local_port
    local_port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$out" | head -n 1)
    [ -n "$local_port" ] || die "cannot read the local port from: $(cat "$out")"
    forward_url="http://127.0.0.1:$local_port"
}

run_example() {
    local file=$1 app=$2 http_service=$3 http_port=$4
    apply_example "$file" "$app"
    local rtmp
    rtmp=$(rtmp_url_of "$app")
    port_forward "$http_service" "$http_port"
    stream_verify "$rtmp" "$forward_url"
}

cmd_minimal() {
    need kubectl
    run_example "$repo/examples/minimal.yaml" live live-http 80
}

cmd_scale_out() {
    need kubectl
    # The minimal example's pod would compete for the CPU the scale-out pods request.
    kc -n "$namespace" delete liveapplication live --ignore-not-found --wait --timeout "${timeout}s"
    run_example "$repo/examples/scale-out.yaml" scale-out scale-out-http 80
    local ingest http
    ingest=$(kc -n "$namespace" get liveapplication scale-out -o jsonpath='{.status.readyReplicas}')
    log "scale-out: $ingest ingest replicas ready"
    http=$(kc -n "$namespace" get pods -l app.kubernetes.io/instance=scale-out,app.kubernetes.io/component=http \
        -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Running$' || true)
    [ "$http" -ge 2 ] || die "scale-out: expected 2 running HTTP pods, found $http"
}

cmd_kind_rwx_storage() {
    local node=$1
    need kubectl docker
    log "making a hostPath ReadWriteMany volume on $node the default storage"
    docker exec "$node" mkdir -p -m 1777 "$rwx_dir"
    apply_rwx_storage
}

cmd_host_rwx_storage() {
    need kubectl
    log "making a hostPath ReadWriteMany volume in $rwx_dir on this machine (the node) the default storage"
    mkdir -p "$rwx_dir"
    chmod 1777 "$rwx_dir"
    apply_rwx_storage
}

apply_rwx_storage() {
    local sc
    for sc in $(kc get storageclass -o name); do
        kc annotate "$sc" --overwrite storageclass.kubernetes.io/is-default-class=false >/dev/null
    done
    kc apply -f - <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: oxcast-rwx
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
---
# All pods of a single-node cluster share this directory, which is what a
# ReadWriteMany volume provides on a real cluster (NFS, CephFS, EFS, ...).
apiVersion: v1
kind: PersistentVolume
metadata:
  name: oxcast-rwx
spec:
  storageClassName: oxcast-rwx
  capacity:
    storage: 100Gi
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath:
    path: $rwx_dir
    type: Directory
YAML
}

cmd_dump() {
    need kubectl
    local ns
    for ns in "$release_namespace" "$namespace"; do
        echo "===== namespace $ns"
        kc -n "$ns" get all,liveapplications,configmaps,pvc,leases -o wide 2>&1 || true
        echo "----- describe"
        kc -n "$ns" describe liveapplications,deployments,services,pods,pvc 2>&1 || true
        echo "----- events"
        kc -n "$ns" get events --sort-by=.lastTimestamp 2>&1 || true
        local pod
        for pod in $(kc -n "$ns" get pods -o name 2>/dev/null); do
            echo "----- logs $pod"
            kc -n "$ns" logs "$pod" --all-containers --prefix --tail=300 2>&1 || true
            kc -n "$ns" logs "$pod" --all-containers --prefix --previous --tail=100 2>/dev/null || true
        done
    done
    echo "===== nodes, storage"
    kc get nodes -o wide 2>&1 || true
    kc get storageclass,pv 2>&1 || true
}

cmd_cleanup() {
    need kubectl helm
    kc delete namespace "$namespace" --ignore-not-found --wait --timeout "${timeout}s" || true
    hm uninstall "$release" --namespace "$release_namespace" --wait --timeout "${timeout}s" 2>/dev/null || true
}

cmd_all() {
    dump_on_failure=true
    cmd_install
    cmd_minimal
    if $scale_out; then cmd_scale_out; fi
    log "all end-to-end checks passed"
}

# --- stream and verify (no cluster) --------------------------------------

# Fetches URL into $2 (body) and $3 (headers); fails unless HTTP 200.
fetch() {
    local url=$1 body=$2 headers=$3 code
    code=$(curl -sS --max-time 30 -o "$body" -D "$headers" -w '%{http_code}' "$url") || return 1
    [ "$code" = 200 ]
}

# The value of header $2 in header dump $1 (case-insensitive name, CR removed).
header() {
    awk -v name="$2" 'BEGIN { IGNORECASE = 1 } {
        sub(/\r$/, "")
        i = index($0, ":")
        if (i > 0 && tolower(substr($0, 1, i - 1)) == tolower(name)) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); value = v }
    } END { print value }' "$1"
}

expect_header() {
    local file=$1 name=$2 want=$3 what=$4 got
    got=$(header "$file" "$name")
    [ "$got" = "$want" ] || die "$what: $name is '$got', expected '$want'"
}

playlist_ended() {
    fetch "$1" "$work/playlist.m3u8" "$work/playlist.headers" && grep -q '^#EXT-X-ENDLIST' "$work/playlist.m3u8"
}

playlist_has_segments() {
    fetch "$1" "$work/playlist.m3u8" "$work/playlist.headers" && grep -q '^#EXTINF:' "$work/playlist.m3u8"
}

# Resolves playlist entry $2 against playlist URL $1.
resolve_uri() {
    local base=$1 uri=$2
    case $uri in
    http://* | https://*) echo "$uri" ;;
    /*)
        local origin
        origin=$(echo "$base" | sed -E 's#^(https?://[^/]+).*#\1#')
        echo "$origin$uri"
        ;;
    *) echo "${base%/*}/$uri" ;;
    esac
}

stream_verify() {
    local rtmp_app_url=$1 http_base=${2%/}
    need ffmpeg ffprobe curl
    workdir
    local seconds=${duration:-30} window=${playlist_length:-30}
    local publish_url="${rtmp_app_url%/}/$stream_key"
    local playlist_url="$http_base${path_prefix%/}/$stream_key/index.m3u8"

    log "publishing ${seconds}s of test video to $publish_url"
    ffmpeg -hide_banner -nostdin -loglevel error \
        -re -f lavfi -i "testsrc2=size=640x360:rate=30" \
        -re -f lavfi -i "sine=frequency=440:sample_rate=48000" \
        -t "$seconds" -c:v libx264 -preset veryfast -pix_fmt yuv420p \
        -g 30 -keyint_min 30 -sc_threshold 0 -c:a aac -b:a 96k \
        -f flv "$publish_url" >"$work/ffmpeg.log" 2>&1 &
    local ffmpeg_pid=$!
    cleanup_pids+=("$ffmpeg_pid")

    # While the stream is live: a playlist with segments and without ENDLIST.
    wait_for "$((seconds + 30))" "the live playlist at $playlist_url" playlist_has_segments "$playlist_url"
    if grep -q '^#EXT-X-ENDLIST' "$work/playlist.m3u8" && kill -0 "$ffmpeg_pid" 2>/dev/null; then
        die "the playlist was ended while the stream is still live"
    fi
    log "the live playlist is up"

    if ! wait "$ffmpeg_pid"; then
        cat "$work/ffmpeg.log" >&2
        die "ffmpeg failed to publish to $publish_url"
    fi
    # When the publisher stops, the server ends the playlist.
    wait_for 60 "EXT-X-ENDLIST in $playlist_url" playlist_ended "$playlist_url"
    verify_playlist "$playlist_url" "$seconds" "$window"
}

verify_playlist() {
    local url=$1 seconds=$2 window=$3
    local m3u8="$work/playlist.m3u8" headers="$work/playlist.headers"
    fetch "$url" "$m3u8" "$headers" || die "cannot fetch $url"
    expect_header "$headers" Cache-Control no-cache "the playlist"
    expect_header "$headers" Content-Type application/vnd.apple.mpegurl "the playlist"
    expect_header "$headers" Access-Control-Allow-Origin '*' "the playlist"
    [ "$(head -n 1 "$m3u8" | tr -d '\r')" = "#EXTM3U" ] || die "the playlist does not start with #EXTM3U"

    local target total count
    target=$(sed -n 's/^#EXT-X-TARGETDURATION:\([0-9]*\).*/\1/p' "$m3u8")
    [ -n "$target" ] || die "the playlist has no EXT-X-TARGETDURATION"
    total=$(awk -F'[:,]' '/^#EXTINF:/ { s += $2 } END { printf "%.3f", s }' "$m3u8")
    count=$(grep -c '^#EXTINF:' "$m3u8")
    # The window holds the last `window` seconds (all of a shorter stream),
    # give or take the segment being cut when the stream stopped.
    local expect=$((seconds < window ? seconds : window))
    awk -v t="$total" -v e="$expect" -v d="$target" 'BEGIN { exit !(t >= e - 2 * d && t <= e + 2 * d) }' ||
        die "the playlist holds ${total}s of media in $count segments, expected about ${expect}s"
    log "the playlist holds ${total}s in $count segments (target duration ${target}s)"

    local uri n=0
    while IFS= read -r uri; do
        uri=${uri%$'\r'}
        [ -n "$uri" ] || continue
        [[ $uri == \#* ]] && continue
        n=$((n + 1))
        local seg="$work/segment-$n.ts" seg_headers="$work/segment-$n.headers" seg_url
        seg_url=$(resolve_uri "$url" "$uri")
        fetch "$seg_url" "$seg" "$seg_headers" || die "cannot fetch segment $seg_url"
        expect_header "$seg_headers" Cache-Control "public, max-age=31536000, immutable" "segment $uri"
        expect_header "$seg_headers" Content-Type video/mp2t "segment $uri"
        local codecs
        codecs=$(ffprobe -v error -show_entries stream=codec_name -of csv=p=0 "$seg" | sed "/^$/d" | sort -u | tr '\n' ' ')
        [ "$codecs" = "aac h264 " ] || die "segment $uri has streams '$codecs', expected aac and h264"
    done <"$m3u8"
    [ "$n" -eq "$count" ] || die "fetched $n segments, the playlist lists $count"

    # The whole playlist decodes without a single error, through HTTP as a
    # player would read it.
    local errors
    errors=$(ffmpeg -hide_banner -nostdin -v error -i "$url" -f null - 2>&1) || die "ffmpeg cannot decode $url: $errors"
    [ -z "$errors" ] || die "decoding $url reported errors: $errors"
    log "verified $count segments: headers, codecs and a clean decode"
}

# --- verify-local ---------------------------------------------------------

find_ingest_bin() {
    if [ -n "$ingest_bin" ]; then
        echo "$ingest_bin"
        return
    fi
    local target_dir=${CARGO_TARGET_DIR:-$repo/target} candidate
    for candidate in "$target_dir/debug/oxcast-ingest" "$target_dir/release/oxcast-ingest"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    command -v oxcast-ingest || die "no oxcast-ingest: build it (cargo build -p oxcast-ingest) or pass --ingest-bin"
}

listening_addr() {
    sed -n "s/^listening $1 \\(.*\\)$/\\1/p" "$2" | head -n 1
}

server_listening() {
    [ -n "$(listening_addr rtmp "$1")" ] && [ -n "$(listening_addr http "$1")" ]
}

cmd_verify_local() {
    local bin
    bin=$(find_ingest_bin)
    [ -x "$bin" ] || die "$bin is not executable"
    workdir
    : "${duration:=6}" "${playlist_length:=10}"
    log "starting $bin on 127.0.0.1"
    "$bin" run --rtmp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --hls-root "$work/hls" --hls-fragment 1s --hls-playlist-length "${playlist_length}s" \
        >"$work/server.out" 2>"$work/server.err" &
    local server=$!
    cleanup_pids+=("$server")
    if ! wait_for 30 "the server's listening lines" server_listening "$work/server.out"; then
        cat "$work/server.err" >&2
        die "oxcast-ingest did not start"
    fi
    local rtmp http
    rtmp=$(listening_addr rtmp "$work/server.out")
    http=$(listening_addr http "$work/server.out")
    stream_verify "rtmp://$rtmp/app" "http://$http"
    kill -TERM "$server"
    wait "$server" || die "oxcast-ingest exited with status $? on SIGTERM"
    log "verify-local passed"
}

# --- arguments ------------------------------------------------------------

args=()
while (($#)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --scale-out) scale_out=true ;;
    --context | --namespace | --release | --release-namespace | --operator-image | --ingest-image | \
        --duration | --stream-key | --path-prefix | --playlist-length | --timeout | --ingest-bin | --rwx-dir)
        if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
        case $1 in
        --context) context=$2 ;;
        --namespace) namespace=$2 ;;
        --release) release=$2 ;;
        --release-namespace) release_namespace=$2 ;;
        --operator-image) operator_image=$2 ;;
        --ingest-image) ingest_image=$2 ;;
        --duration)
            positive_int "$1" "$2"
            duration=$2
            ;;
        --stream-key) stream_key=$2 ;;
        --path-prefix) path_prefix=$2 ;;
        --playlist-length)
            positive_int "$1" "$2"
            playlist_length=$2
            ;;
        --timeout)
            positive_int "$1" "$2"
            timeout=$2
            ;;
        --ingest-bin) ingest_bin=$2 ;;
        --rwx-dir) rwx_dir=$2 ;;
        esac
        shift
        ;;
    -*) usage_error "unknown option $1" ;;
    *) args+=("$1") ;;
    esac
    shift
done

((${#args[@]})) || usage_error "no command given"
[[ $stream_key =~ ^[A-Za-z0-9._-]{1,128}$ ]] || usage_error "--stream-key must be 1-128 of A-Z a-z 0-9 . _ -"
[[ $path_prefix == /* ]] || usage_error "--path-prefix must start with /"

command=${args[0]}
operands=("${args[@]:1}")
expect_operands() {
    [ "${#operands[@]}" -eq "$1" ] || usage_error "$command takes $1 argument(s): $2"
}

case $command in
all) expect_operands 0 "" && cmd_all ;;
install) expect_operands 0 "" && cmd_install ;;
minimal) expect_operands 0 "" && cmd_minimal ;;
scale-out) expect_operands 0 "" && cmd_scale_out ;;
kind-rwx-storage) expect_operands 1 "NODE" && cmd_kind_rwx_storage "${operands[0]}" ;;
host-rwx-storage) expect_operands 0 "" && cmd_host_rwx_storage ;;
stream-verify) expect_operands 2 "RTMP_APP_URL HTTP_BASE_URL" && stream_verify "${operands[0]}" "${operands[1]}" ;;
verify-url)
    expect_operands 1 "PLAYLIST_URL"
    need ffmpeg ffprobe curl
    workdir
    verify_playlist "${operands[0]}" "${duration:-30}" "${playlist_length:-30}"
    ;;
verify-local) expect_operands 0 "" && cmd_verify_local ;;
dump) expect_operands 0 "" && cmd_dump ;;
cleanup) expect_operands 0 "" && cmd_cleanup ;;
*) usage_error "unknown command '$command'" ;;
esac
