# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): logging, process
# CPU and memory from /proc, ports, and a bounded wait.
# The caller sets PIDS=() (processes stopped on exit) before using these.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

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

# shellcheck disable=SC2034 # read by the scripts that source this
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

# A free port below the kernel's ephemeral range, so the generator's own
# client connections (hundreds of them) cannot be holding it.
free_port() {
    local port low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 1 200); do
        port=$((10000 + RANDOM % (low - 10000)))
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

# The release oxcast-ingest: $OXCAST_BIN, or built with cargo.
oxcast_bin() {
    local bin=${OXCAST_BIN:-}
    if [ -z "$bin" ]; then
        local target=${CARGO_TARGET_DIR:-$REPO/target}
        log "building oxcast-ingest (release)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release -q -p oxcast-ingest --bin oxcast-ingest)
        bin=$target/release/oxcast-ingest
    fi
    [ -x "$bin" ] || die "oxcast binary $bin not found"
    echo "$bin"
}

# start_oxcast BIN DIR [ARGS...]: `oxcast-ingest rtmp` (app `live`) writing
# HLS to DIR/hls, its metrics on an ops port. Sets SERVER_PID, SERVER_PORT
# (RTMP) and OPS_PORT.
start_oxcast() {
    local bin=$1 dir=$2
    shift 2
    mkdir -p "$dir/hls"
    "$bin" rtmp --rtmp-listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --hls-root "$dir/hls" \
        --app live "$@" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for 30 grep -q '^listening ops ' "$dir/stdout.log" ||
        die "oxcast did not start: $(tail -n 5 "$dir/stderr.log")"
    SERVER_PORT=$(sed -n 's/^listening rtmp .*:\([0-9]*\)$/\1/p' "$dir/stdout.log" | head -1)
    OPS_PORT=$(sed -n 's/^listening ops .*:\([0-9]*\)$/\1/p' "$dir/stdout.log" | head -1)
    log "oxcast: pid $SERVER_PID, rtmp port $SERVER_PORT, ops port $OPS_PORT"
}

# start_nginx DIR WORKERS: nginx + nginx-rtmp-module in the reference VPS
# configuration (live on; deny play all; hls on; hls_nested on;
# hls_fragment_naming system; hls_datetime system where the module has it)
# with `worker_processes WORKERS`, HLS in DIR/hls; HLS_KEYS=1 adds
# hls_keys. Sets SERVER_PID (the master; workers are its children),
# SERVER_PORT and NGINX_NOTE.
NGINX=${NGINX:-/usr/sbin/nginx}
RTMP_MODULE=${RTMP_MODULE:-/usr/lib/nginx/modules/ngx_rtmp_module.so}
# shellcheck disable=SC2034 # read by the scripts that source this
NGINX_NOTE=""
start_nginx() {
    local dir=$1 workers=$2 port user_line=""
    [ -x "$NGINX" ] || die "nginx not found at $NGINX (apt-get install nginx libnginx-mod-rtmp)"
    [ -f "$RTMP_MODULE" ] || die "nginx-rtmp module not found at $RTMP_MODULE (apt-get install libnginx-mod-rtmp)"
    mkdir -p "$dir/hls" "$dir/logs"
    port=$(free_port)
    # Workers run as `user`; as root keep root so they can write the HLS dir.
    if [ "$(id -u)" = 0 ]; then user_line="user root root;"; fi
    local keys_lines="# no hls_keys"
    if [ "${HLS_KEYS:-0}" = 1 ]; then
        mkdir -p "$dir/keys"
        keys_lines="hls_keys on; hls_key_path $dir/keys; hls_fragments_per_key 6; hls_key_url /keys/;"
    fi
    # hls_datetime exists only in some builds of the module (not in Debian's
    # 1.2.2); without it nginx-rtmp writes no PROGRAM-DATE-TIME at all.
    local datetime_line="hls_datetime system;"
    if ! grep -aq hls_datetime "$RTMP_MODULE"; then
        datetime_line="# hls_datetime system; (not supported by this module build)"
        NGINX_NOTE="this nginx-rtmp build has no hls_datetime; run without it"
        log "nginx-rtmp: $NGINX_NOTE"
    fi
    cat >"$dir/nginx.conf" <<CONF
load_module $RTMP_MODULE;
$user_line
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
worker_rlimit_nofile 8192;
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
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for 30 port_open "$port" || die "nginx did not start: $(tail -n 5 "$dir/logs/error.log" "$dir/stdout.log")"
    SERVER_PORT=$port
    log "nginx-rtmp (worker_processes $workers): master pid $SERVER_PID, workers: $(server_pids "$SERVER_PID" | tail -n +2 | tr '\n' ' ')rtmp port $port"
}
