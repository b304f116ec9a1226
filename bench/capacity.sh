#!/usr/bin/env bash
# Capacity benchmark: how many publishers one ingest process holds, oxcast
# against nginx-rtmp, measured in the same run.
#
# For each stream count, each server gets the same load: the `rtmp-load`
# generator (one process) replays a 3 Mbit/s 720p30 H.264/AAC capture with
# a 2 s keyframe interval to N RTMP connections at real-time pace, each its
# own stream key. Servers: oxcast (`oxcast-ingest rtmp`, its per-process
# publisher and connection limits raised above the count), nginx-rtmp with
# `worker_processes 1` (the reference VPS) and with `auto` (one worker per
# core). After a warm-up, over a fixed window:
#   - server CPU (utime+stime of all its processes, /proc) per stream;
#   - RSS (sum over its processes) at the end, and per stream above idle;
#   - correctness, over the segments listed during the window: every
#     stream listed at least the window minus two segments' worth of media
#     (the server keeps up with real time), no EXT-X-DISCONTINUITY (the
#     input has none), no segment longer than in the unloaded case (6 s:
#     the 5 s default fragment rounded up to the 2 s keyframe interval);
#   - oxcast only: p50/p99 of oxcast_playlist_publish_latency_seconds over
#     the window (arrival of the keyframe that closes a segment to the
#     playlist listing it written), from the server's histogram;
#   - the generator's own lag: a run where it fell behind real time by more
#     than --max-lag is INVALID (the generator, not the server, was the
#     limit) and says so.
# A server "misses" at a count when any correctness check fails there; its
# capacity on this machine is the largest count it did not miss.
#
# Usage: bench/capacity.sh [--counts "20 100 250 500"] [--servers "oxcast
#                          nginx1 nginxauto"] [--warmup SECS] [--measure SECS]
#                          [--max-lag MS] [--keep]
# Environment: COUNTS, SERVERS, WARMUP (default 15), MEASURE (default 30),
#   MAX_LAG (ms, default 200), BATCH_MS (rtmp-load --batch-ms: 0, one
#   write per due time as an encoder sends; 100 halves the generator's
#   CPU at the cost of burstier arrival), OXCAST_BIN / RTMP_LOAD_BIN (skip the release
#   builds), NGINX, RTMP_MODULE (as bench/ingest.sh), CARGO_TARGET_DIR.
# Needs: ffmpeg (the capture is encoded once and cached), nginx and
# libnginx-mod-rtmp (Debian packages), cargo, curl, python3.

set -euo pipefail

COUNTS=${COUNTS:-20 100 250 500}
SERVERS=${SERVERS:-oxcast nginx1 nginxauto}
WARMUP=${WARMUP:-15}
MEASURE=${MEASURE:-30}
MAX_LAG=${MAX_LAG:-200}
BATCH_MS=${BATCH_MS:-0}
KEEP=0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The capture: 2 s GOP at 30 fps. Both servers cut at the first keyframe
# at or after their 5 s default fragment, so unloaded segments last 6 s
# (a frame of slack); a longer one means a missed cut.
GOP_SECONDS=2
MAX_SEGMENT=6.05

while [ $# -gt 0 ]; do
    case "$1" in
        --counts) COUNTS=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --measure) MEASURE=$2; shift 2 ;;
        --max-lag) MAX_LAG=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $BATCH_MS =~ ^[0-9]+$ ]] || { echo "BATCH_MS must be a whole number of ms" >&2; exit 2; }
for v in WARMUP MEASURE MAX_LAG; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, got '${!v}'" >&2; exit 2; }
done
[ "$MEASURE" -ge 20 ] || { echo "--measure must be at least 20 s (three 6 s segments)" >&2; exit 2; }
for n in $COUNTS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "--counts: '$n' is not a positive integer" >&2; exit 2; }
done
for s in $SERVERS; do
    case "$s" in oxcast | nginx1 | nginxauto) ;; *) echo "--servers: unknown server '$s'" >&2; exit 2 ;; esac
done

PIDS=()
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

INPUT_KBPS=n/a
for tool in ffmpeg curl getconf python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcast-capacity.XXXXXX")
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
    if [ "$KEEP" = 1 ]; then log "kept work directory $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# More connections than the default 1024 descriptors at 500 streams.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

OXCAST=$(oxcast_bin)
RTMP_LOAD=${RTMP_LOAD_BIN:-}
if [ -z "$RTMP_LOAD" ]; then
    target=${CARGO_TARGET_DIR:-$REPO/target}
    log "building rtmp-load (release)"
    (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release -q -p oxcast-tests --bin rtmp-load)
    RTMP_LOAD=$target/release/rtmp-load
fi
[ -x "$RTMP_LOAD" ] || die "rtmp-load not found at $RTMP_LOAD"

# --- playlists and the latency histogram ----------------------------------------

# playlist_state HLS_DIR N [SINCE_FILE]: one line per stream, "<next
# segment number> <discontinuities> <longest EXTINF> <media seconds>",
# where the last three count only segments numbered at or after that
# stream's first field in SINCE_FILE (every listed segment without it).
# Segment numbers are EXT-X-MEDIA-SEQUENCE plus the position in the list.
playlist_state() {
    local dir=$1 n=$2 since_file=${3:-} i since
    for i in $(seq 1 "$n"); do
        since=0
        if [ -n "$since_file" ]; then since=$(sed -n "${i}p" "$since_file" | cut -d' ' -f1); fi
        awk -v since="${since:-0}" '
            /^#EXT-X-MEDIA-SEQUENCE:/ { split($0, a, ":"); seq = a[2] + 0 }
            /^#EXT-X-DISCONTINUITY$/ { pending = 1 }
            /^#EXTINF:/ {
                split($0, a, /[:,]/)
                if (seq + segs >= since) {
                    media += a[2]; if (a[2] + 0 > longest) longest = a[2] + 0
                    if (pending) disc++
                }
                pending = 0; segs++
            }
            END { printf "%d %d %.3f %.3f\n", seq + segs, disc, longest, media }
        ' "$dir/cap-$i/index.m3u8" 2>/dev/null || echo "0 0 0 0"
    done
}

# latency_buckets OPS_PORT -> "le count" lines of the histogram.
latency_buckets() {
    curl -fsS "http://127.0.0.1:$1/metrics" |
        sed -n 's/^oxcast_playlist_publish_latency_seconds_bucket{le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
}

# percentile BEFORE AFTER Q -> the upper bound (ms) of the bucket holding
# quantile Q of the observations made between the two snapshots.
percentile() {
    join <(sort "$1") <(sort "$2") | awk -v q="$3" '
        { le[NR] = $1; d[NR] = $3 - $2 }
        END {
            n = NR; total = 0
            for (i = 1; i <= n; i++) if (le[i] == "+Inf") total = d[i]
            if (total == 0) { print "n/a"; exit }
            best = "+Inf"
            for (i = 1; i <= n; i++) {
                if (le[i] != "+Inf" && d[i] >= q * total && (best == "+Inf" || le[i] + 0 < best + 0)) best = le[i]
            }
            if (best == "+Inf") print ">10000"; else printf "%g\n", best * 1000
        }'
}

# --- one measurement ----------------------------------------------------------------

# ROW: server count cpu% cpu/stream% rss_MiB rss/stream_MiB kept_up least_media_s discont longest p50 p99 gen_valid gen_lag_ms gen_cpu% verdict
ROWS=()

measure() {
    local server=$1 n=$2 dir=$WORK/$1-$2
    mkdir -p "$dir"
    case "$server" in
        oxcast)
            # The default limits (100 publishers, 1000 connections per
            # process) protect a pod; a capacity run lifts them above the
            # count so the machine, not the config, is the limit.
            printf 'rtmp:\n  limits:\n    maxPublishers: %d\n    maxConnections: %d\n' \
                $((n + 10)) $((n + 100)) >"$dir/limits.yaml"
            start_oxcast "$OXCAST" "$dir" --config "$dir/limits.yaml"
            ;;
        nginx1) start_nginx "$dir" 1 ;;
        nginxauto) start_nginx "$dir" auto ;;
    esac
    local spid=$SERVER_PID port=$SERVER_PORT idle
    idle=$(sum_rss_kib "$spid")
    local total=$((WARMUP + MEASURE + 5))
    log "$server x $n: rtmp-load for ${total}s (warm-up ${WARMUP}s, window ${MEASURE}s)"
    "$RTMP_LOAD" --url "rtmp://127.0.0.1:$port/live" --streams "$n" --duration "$total" \
        --prefix cap --max-lag "$MAX_LAG" --batch-ms "$BATCH_MS" --ramp "$GOP_SECONDS" --output "$dir/load.json" \
        >"$dir/load.stdout" 2>"$dir/load.stderr" &
    local gen=$!
    PIDS+=("$gen")
    # The first run encodes the capture (cached afterwards): the clock
    # starts when the generator starts publishing.
    wait_for 900 grep -q 'publishing' "$dir/load.stderr" ||
        die "rtmp-load did not start publishing: $(tail -n 5 "$dir/load.stderr")"
    sleep "$WARMUP"
    kill -0 "$spid" 2>/dev/null || die "$server exited during the warm-up"
    local t0 t1 start end
    playlist_state "$dir/hls" "$n" >"$dir/before"
    if [ "$server" = oxcast ]; then latency_buckets "$OPS_PORT" >"$dir/lat0"; fi
    t0=$(sum_ticks "$spid")
    start=$(date +%s%N)
    sleep "$MEASURE"
    t1=$(sum_ticks "$spid")
    end=$(date +%s%N)
    kill -0 "$spid" 2>/dev/null || die "$server exited during the window"
    local rss
    rss=$(sum_rss_kib "$spid")
    playlist_state "$dir/hls" "$n" "$dir/before" >"$dir/after"
    local p50=n/a p99=n/a
    if [ "$server" = oxcast ]; then
        latency_buckets "$OPS_PORT" >"$dir/lat1"
        p50=$(percentile "$dir/lat0" "$dir/lat1" 0.5)
        p99=$(percentile "$dir/lat0" "$dir/lat1" 0.99)
    fi
    local gen_rc=0
    wait "$gen" || gen_rc=$?
    stop_pids "$spid"
    # 500 streams write about 10 GB in a run: keep the logs, not the media.
    rm -rf "$dir/hls" "$dir/keys"
    # kept up: streams that listed at least MEASURE - 2 x MAX_SEGMENT s.
    local advanced discont longest least
    advanced=$(awk -v need="$(awk -v m="$MEASURE" -v s="$MAX_SEGMENT" 'BEGIN {print m - 2 * s}')" \
        '$4 >= need { n++ } END { print n + 0 }' "$dir/after")
    least=$(awk 'NR == 1 || $4 < m { m = $4 } END { printf "%.1f", m + 0 }' "$dir/after")
    discont=$(awk '{ d += $2 } END { print d + 0 }' "$dir/after")
    longest=$(awk '$3 > m { m = $3 } END { printf "%.3f", m + 0 }' "$dir/after")
    local valid=false lag=n/a gen_cpu=n/a
    if [ -s "$dir/load.json" ]; then
        read -r valid lag gen_cpu INPUT_KBPS < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(str(r["valid"]).lower(), round(r["generator_lag"]["max_ms"], 1), round(r["cpu"]["percent_per_stream"], 3), round(r["input_kbps"]))
' "$dir/load.json")
    fi
    local cpu verdict
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((end - start)) 'BEGIN {printf "%.2f", 100 * d / hz / (ns / 1e9)}')
    if [ "$valid" != true ] || [ "$gen_rc" = 2 ]; then
        verdict=INVALID
    elif [ "$advanced" != "$n" ] || [ "$discont" != 0 ] || awk -v l="$longest" -v m="$MAX_SEGMENT" 'BEGIN {exit !(l > m)}'; then
        verdict=MISS
    else
        verdict=ok
    fi
    ROWS+=("$server $n $cpu $(awk -v c="$cpu" -v n="$n" 'BEGIN {printf "%.3f", c / n}') \
$(awk -v r="$rss" 'BEGIN {printf "%.1f", r / 1024}') \
$(awk -v r="$rss" -v i="$idle" -v n="$n" 'BEGIN {printf "%.3f", (r - i) / 1024 / n}') \
$advanced $least $discont $longest $p50 $p99 $valid ${lag:-n/a} ${gen_cpu:-n/a} $verdict")
    log "$server x $n: ${ROWS[-1]}"
}

for n in $COUNTS; do
    for s in $SERVERS; do
        measure "$s" "$n"
    done
done

# --- report ---------------------------------------------------------------------------

echo
echo "capacity benchmark: $INPUT_KBPS kbit/s 720p30 H.264/AAC per stream, GOP ${GOP_SECONDS}s, warm-up ${WARMUP}s, window ${MEASURE}s"
echo "machine: $(nproc) cores, $(uname -sr), load before the run: $(cut -d' ' -f1-3 /proc/loadavg); nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
if [ -n "$NGINX_NOTE" ]; then echo "note: $NGINX_NOTE"; fi
printf '%-10s %6s %8s %11s %8s %11s %8s %8s %8s %9s %9s %9s %6s %8s %8s %s\n' \
    server streams cpu% cpu/stream% rss_MiB rss/stream kept_up least_s discont longest_s p50_ms p99_ms gen_ok gen_lag genCPU/s verdict
for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086 # one row, split into its columns
    printf '%-10s %6s %8s %11s %8s %11s %8s %8s %8s %9s %9s %9s %6s %8s %8s %s\n' $row
done

# Ratios against nginx-rtmp (worker_processes 1) at each count, and capacity.
echo
for n in $COUNTS; do
    o=$(printf '%s\n' "${ROWS[@]}" | awk -v n="$n" '$1 == "oxcast" && $2 == n {print $4, $6}')
    g=$(printf '%s\n' "${ROWS[@]}" | awk -v n="$n" '$1 == "nginx1" && $2 == n {print $4, $6}')
    if [ -n "$o" ] && [ -n "$g" ]; then
        read -r ocpu orss <<<"$o"
        read -r ncpu nrss <<<"$g"
        echo "$n streams: cpu/stream oxcast / nginx-rtmp(wp1) = $(awk -v a="$ocpu" -v b="$ncpu" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "n/a"}') (target <= 0.5); rss/stream $orss vs $nrss MiB"
    fi
done
for s in $SERVERS; do
    capacity=$(printf '%s\n' "${ROWS[@]}" | awk -v s="$s" '
        $1 == s && !miss { if ($16 == "ok") c = $2; else miss = $2 }
        END { print (c ? c : 0), (miss ? miss : "-") }')
    read -r held first_miss <<<"$capacity"
    echo "$s: held $held streams; first miss or invalid run at: $first_miss"
done
