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

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"


for tool in ffmpeg ffprobe getconf; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install ffmpeg)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcast-bench.XXXXXX")
PIDS=()

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

bench_oxcast() {
    local dir=$WORK/oxcast
    local extra=()
    if [ -n "${OXCAST_ARGS:-}" ]; then read -r -a extra <<<"$OXCAST_ARGS"; fi
    if [ "${HLS_KEYS:-0}" = 1 ]; then
        extra+=(--hls-encryption --hls-fragments-per-key 6 --hls-key-dir "$dir/keys")
    fi
    start_oxcast "$(oxcast_bin)" "$dir" "${extra[@]}"
    local spid=$SERVER_PID idle
    idle=$(sum_rss_kib "$spid")
    run_phase oxcast "$spid" "$SERVER_PORT" live "$dir/hls" "$dir/stderr.log"
    RESULT[oxcast]="$PHASE $idle"
    stop_pids "$spid"
}

# --- nginx-rtmp ----------------------------------------------------------------

bench_nginx() {
    local dir=$WORK/nginx
    start_nginx "$dir" 1
    local spid=$SERVER_PID idle
    idle=$(sum_rss_kib "$spid")
    run_phase nginx "$spid" "$SERVER_PORT" live "$dir/hls" "$dir/logs/error.log"
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
