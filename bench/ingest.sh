#!/usr/bin/env bash
# Ingest benchmark: oxcast vs nginx-rtmp, measured in the same run.
#
# N ffmpeg publishers each push a copy of a 3 Mbit/s 720p30 H.264/AAC stream
# (`-re -stream_loop -1 -c copy`) to one server, which writes HLS. After a
# warm-up, the server's CPU time (utime+stime of all its processes, from
# /proc/PID/stat) is sampled over a fixed window, and its RSS (sum of VmRSS
# over its processes) at the end of the window. Then the same is done with
# nginx + nginx-rtmp-module in the reference VPS configuration
# (worker_processes 1; live on; deny play all; hls on; hls_nested on;
# hls_fragment_naming system; hls_datetime system;).
#
# All traffic is to 127.0.0.1. Every child process is stopped on exit.
#
# Usage: bench/ingest.sh [-n STREAMS] [--warmup SECS] [--measure SECS]
#                        [--only oxcast|nginx] [--strict] [--keep]
# Environment: STREAMS, WARMUP, MEASURE, OXCAST_BIN (skip the release build),
#   OXCAST_ARGS (extra arguments for `oxcast-ingest rtmp`, word-split),
#   HLS_KEYS=1 (AES-128 segment encryption in both servers, a new key every
#   6 segments: oxcast --hls-encryption, nginx-rtmp hls_keys on),
#   NGINX (default /usr/sbin/nginx), RTMP_MODULE (default Debian's
#   /usr/lib/nginx/modules/ngx_rtmp_module.so), BENCH_CACHE (fixture cache,
#   default ~/.cache/oxcast/bench), CARGO_TARGET_DIR.
# Needs: ffmpeg, ffprobe, nginx, libnginx-mod-rtmp (Debian packages), cargo.

set -euo pipefail

STREAMS=${STREAMS:-20}
WARMUP=${WARMUP:-15}
MEASURE=${MEASURE:-30}
ONLY=""
STRICT=0
KEEP=0
NGINX=${NGINX:-/usr/sbin/nginx}
RTMP_MODULE=${RTMP_MODULE:-/usr/lib/nginx/modules/ngx_rtmp_module.so}
BENCH_CACHE=${BENCH_CACHE:-${HOME:-/tmp}/.cache/oxcast/bench}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        -n | --streams) STREAMS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --measure) MEASURE=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --strict) STRICT=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

for v in STREAMS WARMUP MEASURE; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
        echo "$v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done
case "$ONLY" in "" | oxcast | nginx) ;; *) echo "--only oxcast|nginx" >&2; exit 2 ;; esac

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in ffmpeg ffprobe getconf; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install ffmpeg)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcast-bench.XXXXXX")
PIDS=()

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
    if [ "$KEEP" = 1 ]; then
        log "kept work directory $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- fixture -----------------------------------------------------------------

FIXTURE="$BENCH_CACHE/720p30-3M-aac-60s-v1.flv"
make_fixture() {
    [ -s "$FIXTURE" ] && return 0
    mkdir -p "$BENCH_CACHE"
    log "encoding the 60 s 720p30 3 Mbit/s fixture (once) -> $FIXTURE"
    local tmp="$FIXTURE.tmp.$$.flv"
    # Noise keeps the encoder busy spending real bits; CBR with filler makes
    # the stream a steady 3 Mbit/s like a broadcaster's CBR setting.
    # 2 s GOP as OBS's default keyframe interval.
    ffmpeg -nostdin -hide_banner -v error -y \
        -f lavfi -i "testsrc2=size=1280x720:rate=30" \
        -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000" \
        -t 60 -vf "noise=alls=12:allf=t" \
        -c:v libx264 -preset veryfast -profile:v high -bf 2 -g 60 -keyint_min 60 \
        -sc_threshold 0 -pix_fmt yuv420p \
        -b:v 2800k -minrate 2800k -maxrate 2800k -bufsize 2800k -x264-params nal-hrd=cbr \
        -c:a aac -ac 2 -ar 48000 -b:a 160k \
        -f flv "$tmp"
    mv "$tmp" "$FIXTURE"
}
make_fixture
FIXTURE_KBPS=$(ffprobe -v error -show_entries format=bit_rate -of csv=p=0 "$FIXTURE" | awk '{printf "%d", $1/1000}')
log "fixture: $FIXTURE (${FIXTURE_KBPS} kbit/s)"

# --- helpers -----------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# CPU ticks (utime+stime) of one process; fields counted after the ')' that
# ends the command name (which may contain spaces).
proc_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) }
    # rest starts at field 3 (state): utime is field 14, stime field 15.
    awk '{print $12 + $13}' <<<"$rest"
}

proc_rss_kib() {
    awk '/^VmRSS:/ {print $2; found=1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0
}

# The PIDs of a server: the given one and its direct children (nginx workers).
server_pids() {
    local pid=$1
    echo "$pid"
    local kids
    if command -v pgrep >/dev/null; then
        kids=$(pgrep -P "$pid" || true)
    else
        kids=$(cat "/proc/$pid/task/"*/children 2>/dev/null || true)
    fi
    for k in $kids; do echo "$k"; done
}

sum_ticks() {
    local total=0 p
    for p in $(server_pids "$1"); do total=$((total + $(proc_ticks "$p"))); done
    echo "$total"
}

sum_rss_kib() {
    local total=0 p
    for p in $(server_pids "$1"); do total=$((total + $(proc_rss_kib "$p"))); done
    echo "$total"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        if ! port_open "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# wait_for SECS CMD...: retry CMD every 0.1 s for at most SECS seconds.
wait_for() {
    local secs=$1
    shift
    local tries=$((secs * 10))
    for _ in $(seq 1 "$tries"); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

count_playlists() { # count_playlists HLS_DIR -> streams with a listed segment
    local dir=$1 n=0 i
    for i in $(seq 1 "$STREAMS"); do
        if grep -q '^#EXTINF' "$dir/bench$i/index.m3u8" 2>/dev/null; then n=$((n + 1)); fi
    done
    echo "$n"
}

# run_phase NAME SERVER_PID RTMP_PORT APP HLS_DIR SERVER_LOG
# Sets PHASE="cpu_pct rss_kib playlists publishers_alive".
PHASE=""
run_phase() {
    local name=$1 spid=$2 port=$3 app=$4 hls=$5 slog=$6
    local pubs=() i
    log "$name: starting $STREAMS publishers"
    for i in $(seq 1 "$STREAMS"); do
        ffmpeg -nostdin -hide_banner -v error -re -stream_loop -1 -i "$FIXTURE" \
            -c copy -f flv "rtmp://127.0.0.1:$port/$app/bench$i" \
            >"$WORK/$name-pub$i.log" 2>&1 &
        pubs+=("$!")
        PIDS+=("$!")
    done
    log "$name: warm-up ${WARMUP}s"
    sleep "$WARMUP"
    kill -0 "$spid" 2>/dev/null || die "$name exited during warm-up: $(tail -n 20 "$slog")"
    local t0 t1 start end
    t0=$(sum_ticks "$spid")
    start=$(date +%s%N)
    log "$name: measuring ${MEASURE}s"
    sleep "$MEASURE"
    t1=$(sum_ticks "$spid")
    end=$(date +%s%N)
    kill -0 "$spid" 2>/dev/null || die "$name exited during the measurement: $(tail -n 20 "$slog")"
    local rss alive=0 playlists
    rss=$(sum_rss_kib "$spid")
    for i in "${pubs[@]}"; do
        if kill -0 "$i" 2>/dev/null; then alive=$((alive + 1)); fi
    done
    playlists=$(count_playlists "$hls")
    local cpu
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((end - start)) \
        'BEGIN {printf "%.2f", 100 * d / hz / (ns / 1e9)}')
    stop_pids "${pubs[@]}"
    PHASE="$cpu $rss $playlists $alive"
}

# --- oxcast ------------------------------------------------------------------

declare -A RESULT
NGINX_NOTE=""

bench_oxcast() {
    local bin=${OXCAST_BIN:-}
    if [ -z "$bin" ]; then
        local target=${CARGO_TARGET_DIR:-$REPO/target}
        log "building oxcast-ingest (release)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release -q -p oxcast-ingest --bin oxcast-ingest)
        bin=$target/release/oxcast-ingest
    fi
    [ -x "$bin" ] || die "oxcast binary $bin not found"
    local dir=$WORK/oxcast
    mkdir -p "$dir/hls"
    local extra=()
    if [ -n "${OXCAST_ARGS:-}" ]; then read -r -a extra <<<"$OXCAST_ARGS"; fi
    if [ "${HLS_KEYS:-0}" = 1 ]; then
        extra+=(--hls-encryption --hls-fragments-per-key 6 --hls-key-dir "$dir/keys")
    fi
    "$bin" rtmp --rtmp-listen 127.0.0.1:0 --hls-root "$dir/hls" --app live "${extra[@]}" \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    local spid=$!
    PIDS+=("$spid")
    wait_for 30 grep -q '^listening rtmp ' "$dir/stdout.log" ||
        die "oxcast did not start: $(tail -n 5 "$dir/stderr.log")"
    local port
    port=$(sed -n 's/^listening rtmp .*:\([0-9]*\)$/\1/p' "$dir/stdout.log" | head -1)
    log "oxcast: pid $spid, rtmp port $port"
    local idle
    idle=$(sum_rss_kib "$spid")
    run_phase oxcast "$spid" "$port" live "$dir/hls" "$dir/stderr.log"
    RESULT[oxcast]="$PHASE $idle"
    stop_pids "$spid"
}

# --- nginx-rtmp ----------------------------------------------------------------

bench_nginx() {
    [ -x "$NGINX" ] || die "nginx not found at $NGINX (apt-get install nginx libnginx-mod-rtmp)"
    [ -f "$RTMP_MODULE" ] || die "nginx-rtmp module not found at $RTMP_MODULE (apt-get install libnginx-mod-rtmp)"
    local dir=$WORK/nginx port user_line=""
    mkdir -p "$dir/hls" "$dir/logs"
    port=$(free_port)
    # Workers run as `user`; as root keep root so they can write the HLS dir.
    if [ "$(id -u)" = 0 ]; then user_line="user root root;"; fi
    # hls_datetime exists only in some builds of the module (not in Debian's
    # 1.2.2); without it nginx-rtmp writes no PROGRAM-DATE-TIME at all.
    local keys_lines="# no hls_keys"
    if [ "${HLS_KEYS:-0}" = 1 ]; then
        mkdir -p "$dir/keys"
        keys_lines="hls_keys on; hls_key_path $dir/keys; hls_fragments_per_key 6; hls_key_url /keys/;"
    fi
    local datetime_line="hls_datetime system;"
    if ! grep -aq hls_datetime "$RTMP_MODULE"; then
        datetime_line="# hls_datetime system; (not supported by this module build)"
        NGINX_NOTE="this nginx-rtmp build has no hls_datetime; run without it"
        log "nginx-rtmp: $NGINX_NOTE"
    fi
    cat >"$dir/nginx.conf" <<CONF
load_module $RTMP_MODULE;
$user_line
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
rtmp {
    server {
        listen 127.0.0.1:$port;
        application live {
            live on;
            deny play all;
            hls on;
            hls_path $dir/hls;
            hls_nested on;
            hls_fragment_naming system;
            $datetime_line
            $keys_lines
        }
    }
}
CONF
    "$NGINX" -p "$dir/" -e "$dir/logs/error.log" -c "$dir/nginx.conf" \
        >"$dir/stdout.log" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    wait_for 30 port_open "$port" || die "nginx did not start: $(tail -n 5 "$dir/logs/error.log" "$dir/stdout.log")"
    log "nginx-rtmp: master pid $spid, workers: $(server_pids "$spid" | tail -n +2 | tr '\n' ' ')rtmp port $port"
    local idle
    idle=$(sum_rss_kib "$spid")
    run_phase nginx "$spid" "$port" live "$dir/hls" "$dir/logs/error.log"
    RESULT[nginx]="$PHASE $idle"
    stop_pids "$spid"
}

[ "$ONLY" = nginx ] || bench_oxcast
[ "$ONLY" = oxcast ] || bench_nginx

# --- report --------------------------------------------------------------------

echo
echo "ingest benchmark: $STREAMS streams x ${FIXTURE_KBPS} kbit/s 720p30 H.264/AAC, warm-up ${WARMUP}s, window ${MEASURE}s"
echo "machine: $(nproc) cores, $(uname -sr); nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
if [ -n "$NGINX_NOTE" ]; then echo "note: $NGINX_NOTE"; fi
printf '%-11s %7s %10s %12s %9s %9s %12s %10s %9s\n' \
    server streams cpu_total% cpu/stream% rss_MiB idle_MiB rss/stream playlists publishers
valid=1
for s in oxcast nginx; do
    [ -n "${RESULT[$s]:-}" ] || continue
    read -r cpu rss playlists alive idle <<<"${RESULT[$s]}"
    printf '%-11s %7d %10.2f %12.3f %9.1f %9.1f %12.3f %7d/%-2d %6d/%-2d\n' \
        "$([ "$s" = nginx ] && echo nginx-rtmp || echo oxcast)" "$STREAMS" "$cpu" \
        "$(awk -v c="$cpu" -v n="$STREAMS" 'BEGIN {print c / n}')" \
        "$(awk -v r="$rss" 'BEGIN {print r / 1024}')" \
        "$(awk -v r="$idle" 'BEGIN {print r / 1024}')" \
        "$(awk -v r="$rss" -v i="$idle" -v n="$STREAMS" 'BEGIN {print (r - i) / 1024 / n}')" \
        "$playlists" "$STREAMS" "$alive" "$STREAMS"
    if [ "$playlists" != "$STREAMS" ] || [ "$alive" != "$STREAMS" ]; then
        valid=0
        log "$s: only $playlists/$STREAMS playlists, $alive/$STREAMS publishers alive"
    fi
done

if [ -n "${RESULT[oxcast]:-}" ] && [ -n "${RESULT[nginx]:-}" ]; then
    read -r ocpu orss _ _ _ <<<"${RESULT[oxcast]}"
    read -r ncpu nrss _ _ _ <<<"${RESULT[nginx]}"
    ratio=$(awk -v o="$ocpu" -v n="$ncpu" 'BEGIN {if (n > 0) printf "%.3f", o / n; else print "inf"}')
    delta=$(awk -v o="$orss" -v n="$nrss" -v s="$STREAMS" 'BEGIN {printf "%.3f", (o - n) / 1024 / s}')
    cpu_ok=$(awk -v r="$ratio" 'BEGIN {print (r != "inf" && r <= 0.5) ? "PASS" : "FAIL"}')
    rss_ok=$(awk -v d="$delta" 'BEGIN {print (d <= 1.0) ? "PASS" : "FAIL"}')
    echo
    echo "cpu per stream, oxcast / nginx-rtmp:       $ratio   (target <= 0.5)   $cpu_ok"
    echo "rss, (oxcast - nginx-rtmp) per stream MiB: $delta   (target <= 1.0)   $rss_ok"
    if [ "$STRICT" = 1 ] && { [ "$cpu_ok" = FAIL ] || [ "$rss_ok" = FAIL ]; }; then
        exit 3
    fi
fi
[ "$valid" = 1 ] || die "measurement invalid: a server did not produce every playlist or publishers died"
