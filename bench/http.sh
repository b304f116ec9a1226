#!/usr/bin/env bash
# HTTP serving benchmark: oxcast vs nginx, measured in the same run.
#
# Both servers serve the same HLS tree (a live playlist of 6 segments and
# its segments) from a temporary directory, and `wrk` drives each in turn:
#   playlist  GET /live/cam/index.m3u8   (requests/s)
#   segment   GET /live/cam/<id>.ts      (throughput)
# at 64 connections. nginx runs the reference configuration (one worker,
# `location /live { types { application/vnd.apple.mpegurl m3u8;
# video/mp2t ts; } ... }` with `expires max` on .ts and `expires -1d`
# otherwise) plus the CORS header oxcast also sends; oxcast runs
# `oxcast-ingest http` from a release build with its defaults.
#
# Fairness: on a machine with 2+ cores each server is pinned to CPU 0 and
# wrk to CPU 1 (taskset), so each server gets exactly one core (nginx: one
# worker; oxcast: its runtime sizes itself to the one core it may use).
# Each server's CPU time (utime+stime of all its processes, /proc/PID/stat)
# is read before and after every wrk run. Rounds alternate the servers
# (and which goes first) and the median of the rounds is reported.
#
# All traffic goes to 127.0.0.1; every child process is stopped on exit.
#
# Usage: bench/http.sh [--duration SECS] [--rounds N] [--connections N]
#                      [--segment-kib KIB] [--strict] [--keep]
# Environment: DURATION (6), ROUNDS (5), CONNECTIONS (64), SEGMENT_KIB
#   (1536: 5 s at ~2.5 Mbit/s), OXCAST_BIN (skip the release build), NGINX
#   (/usr/sbin/nginx), WRK (wrk), CARGO_TARGET_DIR.
# Needs: nginx and wrk (Debian packages), cargo, taskset (util-linux).

set -euo pipefail

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
SEGMENT_KIB=${SEGMENT_KIB:-1536}
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-wrk}
STRICT=0
KEEP=0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --segment-kib) SEGMENT_KIB=$2; shift 2 ;;
        --strict) STRICT=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

for v in DURATION ROUNDS CONNECTIONS SEGMENT_KIB; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
        echo "$v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$WRK" >/dev/null || die "wrk not found (apt-get install wrk)"
[ -x "$NGINX" ] || die "nginx not found at $NGINX (apt-get install nginx)"
command -v getconf >/dev/null || die "getconf not found"

CLK_TCK=$(getconf CLK_TCK)
CPUS=$(nproc)
SERVER_CPU=()
CLIENT_CPU=()
if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPU=(taskset -c 0)
    CLIENT_CPU=(taskset -c 1)
else
    log "fewer than 2 CPUs or no taskset: not pinning (results are noisier)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/oxcast-http-bench.XXXXXX")
chmod 755 "$WORK" # nginx workers may run as another user
SERVER_PID=""

stop_server() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop_server "$SERVER_PID"
    if [ "$KEEP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- the HLS tree ---------------------------------------------------------

www=$WORK/www
mkdir -p "$www/live/cam"
first_id=1700000000000
{
    printf '#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n#EXT-X-MEDIA-SEQUENCE:1000\n'
    for i in 0 1 2 3 4 5; do
        id=$((first_id + i * 5000))
        printf '#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:%02d.000+00:00\n#EXTINF:5.000,\n%d.ts\n' \
            $((20 + i * 5)) "$id"
        head -c $((SEGMENT_KIB * 1024)) /dev/urandom >"$www/live/cam/$id.ts"
    done
} >"$www/live/cam/index.m3u8"
chmod -R a+rX "$www"
SEGMENT_ID=$((first_id + 5 * 5000))
PLAYLIST_PATH=/live/cam/index.m3u8
SEGMENT_PATH=/live/cam/$SEGMENT_ID.ts

# wrk reports exact totals through this script.
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(99)))
end
EOF

# --- helpers ----------------------------------------------------------------

# A port nothing listens on (nginx cannot report a port 0 binding).
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# CPU ticks (utime+stime) of a process and its children.
cpu_ticks() {
    local root=$1 total=0 pid stat fields
    for pid in "$root" $(pgrep -P "$root" 2>/dev/null || true); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after the command name, which may contain spaces.
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

wait_http() {
    local url=$1
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# Runs wrk against URL for SECS; prints "requests bytes duration_us p99_us
# cpu_ticks" where cpu_ticks is the server's CPU time during the run.
measure() {
    local url=$1 secs=$2 before after out
    before=$(cpu_ticks "$SERVER_PID")
    out=$("${CLIENT_CPU[@]}" "$WRK" -t1 -c"$CONNECTIONS" -d"${secs}s" \
        -s "$WORK/report.lua" "$url")
    after=$(cpu_ticks "$SERVER_PID")
    local line
    line=$(grep '^RESULT ' <<<"$out") || die "no result from wrk: $out"
    local _tag requests bytes duration e_connect e_read e_write e_status e_timeout p99
    read -r _tag requests bytes duration e_connect e_read e_write e_status e_timeout p99 <<<"$line"
    local errors=$((e_connect + e_read + e_write + e_status + e_timeout))
    if [ "$errors" -gt 0 ]; then
        die "wrk errors against $url: connect $e_connect read $e_read write $e_write status $e_status timeout $e_timeout"
    fi
    echo "$requests $bytes $duration $p99 $((after - before))"
}

start_oxcast() {
    # Truncated here, not by the redirection below: that runs in the
    # background job and could come after the first read of the file.
    : >"$WORK/oxcast.out"
    "${SERVER_CPU[@]}" "$OXCAST_BIN" http --hls-root "$www/live" \
        --http-listen 127.0.0.1:0 --player-assets "$WORK/no-assets" \
        >"$WORK/oxcast.out" 2>"$WORK/oxcast.err" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 1 200); do
        addr=$(sed -n 's/^listening http //p' "$WORK/oxcast.out")
        [ -n "$addr" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "oxcast exited: $(cat "$WORK/oxcast.err")"
        sleep 0.05
    done
    [ -n "$addr" ] || die "oxcast did not listen"
    BASE=http://$addr
}

start_nginx() {
    local port
    port=$(free_port)
    mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $www;
        location /live {
            types {
                application/vnd.apple.mpegurl m3u8;
                video/mp2t ts;
            }
            add_header Access-Control-Allow-Origin *;
            location ~ \.ts\$ {
                expires max;
            }
            expires -1d;
        }
    }
}
EOF
    "${SERVER_CPU[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
        >"$WORK/nginx/stdout.log" 2>&1 &
    SERVER_PID=$!
    BASE=http://127.0.0.1:$port
}

start() {
    case "$1" in
        oxcast) start_oxcast ;;
        nginx) start_nginx ;;
    esac
    if ! wait_http "$BASE$PLAYLIST_PATH"; then
        cat "$WORK"/nginx/logs/error.log "$WORK/oxcast.err" 2>/dev/null >&2 || true
        die "$1 does not serve $PLAYLIST_PATH"
    fi
}

# --- build ------------------------------------------------------------------

if [ -z "${OXCAST_BIN:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxcast/target}
    log "building oxcast-ingest (release)"
    (cd "$REPO" && cargo build --release -q -p oxcast-ingest --bin oxcast-ingest)
    OXCAST_BIN=$CARGO_TARGET_DIR/release/oxcast-ingest
fi
[ -x "$OXCAST_BIN" ] || die "no oxcast binary at $OXCAST_BIN"

# --- headers, for the record ----------------------------------------------

for server in nginx oxcast; do
    start "$server"
    for path in "$PLAYLIST_PATH" "$SEGMENT_PATH"; do
        log "$server HEAD $path"
        curl -sSI "$BASE$path" | tr -d '\r' | grep -iE '^(HTTP|content-type|cache-control|expires|etag|last-modified|access-control)' | sed 's/^/    /' >&2
    done
    stop_server "$SERVER_PID"
    SERVER_PID=""
done

# --- rounds -----------------------------------------------------------------

declare -A results
for round in $(seq 1 "$ROUNDS"); do
    # Alternate who goes first, so slow drifts in background load even out.
    order=(nginx oxcast)
    if ((round % 2 == 0)); then order=(oxcast nginx); fi
    for server in "${order[@]}"; do
        start "$server"
        for test in playlist segment; do
            if [ "$test" = playlist ]; then url=$BASE$PLAYLIST_PATH; else url=$BASE$SEGMENT_PATH; fi
            measure "$url" 2 >/dev/null # warm-up: caches, connections
            results[$server,$test,$round]=$(measure "$url" "$DURATION")
            # shellcheck disable=SC2086 # word-split the result fields
            set -- ${results[$server,$test,$round]}
            log "round $round/$ROUNDS: $server $test: $(awk -v r="$1" -v b="$2" -v d="$3" -v c="$5" -v t="$CLK_TCK" \
                'BEGIN { printf "%.0f req/s, %.1f MiB/s, CPU %.2f s", r / (d / 1e6), b / (d / 1e6) / 1048576, c / t }')"
        done
        stop_server "$SERVER_PID"
        SERVER_PID=""
    done
done

# --- report -----------------------------------------------------------------

# One derived metric of each result line on stdin; awk does the arithmetic.
# metric: rps | mibps | cpu_us_per_req | cpu_ms_per_gib | cpu_pct | p99_ms
one() {
    awk -v m="$1" -v tck="$CLK_TCK" '
        {
            req = $1; bytes = $2; secs = $3 / 1e6; p99 = $4; cpu = $5 / tck
            if (m == "rps") v = req / secs
            else if (m == "mibps") v = bytes / secs / 1048576
            else if (m == "cpu_us_per_req") v = cpu * 1e6 / req
            else if (m == "cpu_ms_per_gib") v = cpu * 1e3 / (bytes / 1073741824)
            else if (m == "cpu_pct") v = 100 * cpu / secs
            else if (m == "p99_ms") v = p99 / 1000
            printf "%.6f\n", v
        }'
}

# Median over rounds of one metric for one server.
median() {
    local server=$1 test=$2 metric=$3 round
    for round in $(seq 1 "$ROUNDS"); do
        echo "${results[$server,$test,$round]}"
    done | one "$metric" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt() { awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'; }

nginx_version=$({ "$NGINX" -v 2>&1 || true; } | sed 's/.*nginx\///')
# `wrk -v` prints its version and exits non-zero.
wrk_version=$({ "$WRK" -v 2>&1 || true; } | head -1 | awk '{print $2}')
echo
echo "HTTP serving: oxcast vs nginx $nginx_version, wrk $wrk_version, $CONNECTIONS connections," \
    "${DURATION}s x $ROUNDS rounds (median), segment $SEGMENT_KIB KiB," \
    "pinning: ${SERVER_CPU[*]:-none} / ${CLIENT_CPU[*]:-none}"
echo
echo "| test | server | req/s | MiB/s | server CPU % | CPU µs/request | CPU ms/GiB | p99 ms |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for test in playlist segment; do
    for server in nginx oxcast; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$test" "$server" \
            "$(fmt "$(median "$server" "$test" rps)" 0)" \
            "$(fmt "$(median "$server" "$test" mibps)" 1)" \
            "$(fmt "$(median "$server" "$test" cpu_pct)" 0)" \
            "$(fmt "$(median "$server" "$test" cpu_us_per_req)" 2)" \
            "$(fmt "$(median "$server" "$test" cpu_ms_per_gib)" 0)" \
            "$(fmt "$(median "$server" "$test" p99_ms)" 2)"
    done
done
echo
# Ratios are taken per round (the two servers ran back to back, under the
# same background load) and the median of those is reported.
paired_ratio() {
    local test=$1 metric=$2 round a b
    for round in $(seq 1 "$ROUNDS"); do
        a=$(echo "${results[oxcast,$test,$round]}" | one "$metric")
        b=$(echo "${results[nginx,$test,$round]}" | one "$metric")
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.6f\n", a / b }'
    done | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

missed=0
for test in playlist segment; do
    speed=$(paired_ratio "$test" rps)
    cpu=$(paired_ratio "$test" cpu_us_per_req)
    echo "$test: oxcast/nginx throughput ${speed}x (target >= 1.00), CPU per request ${cpu}x (target <= 1.00) (medians of per-round ratios)"
    if awk -v s="$speed" -v c="$cpu" 'BEGIN { exit !(s < 1.0 || c > 1.0) }'; then
        missed=1
    fi
done
if [ "$missed" = 1 ]; then
    log "a target was missed"
    [ "$STRICT" = 1 ] && exit 3
fi
exit 0
