#!/usr/bin/env bash
# Real metadata servers for the store tests: etcd (v3) and redis, loopback only.
#
#   scripts/services.sh start   install if missing, start, wait, print env vars
#   scripts/services.sh stop    stop both
#   scripts/services.sh env     print the env vars the tests read
#   scripts/services.sh restart etcd|redis
#                               kill one server and start it again (etcd keeps
#                               its data dir); used by the restart tests
#
# Fails loudly (non-zero exit) when a server cannot be installed or started:
# the tests must never silently skip a backend.
set -euo pipefail

ETCD_CLIENT_PORT=${TE_ETCD_PORT:-23790}
ETCD_PEER_PORT=${TE_ETCD_PEER_PORT:-23800}
REDIS_PORT=${TE_REDIS_PORT:-26379}
STATE_DIR=${TE_SERVICES_DIR:-/tmp/te-rs-services}
ETCD_DATA="$STATE_DIR/etcd-data"
ETCD_PID="$STATE_DIR/etcd.pid"
ETCD_LOG="$STATE_DIR/etcd.log"
REDIS_PID="$STATE_DIR/redis.pid"
REDIS_LOG="$STATE_DIR/redis.log"

die() { echo "services.sh: ERROR: $*" >&2; exit 1; }
log() { echo "services.sh: $*" >&2; }

print_env() {
    echo "export TE_TEST_ETCD=127.0.0.1:$ETCD_CLIENT_PORT"
    echo "export TE_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT"
}

# ensure_pkg <binary> <debian package>
ensure_pkg() {
    local bin=$1 pkg=$2
    command -v "$bin" >/dev/null 2>&1 && return 0
    [ "$(id -u)" -eq 0 ] || die "$bin is missing and we are not root (apt-get install $pkg)"
    command -v apt-get >/dev/null 2>&1 || die "$bin is missing and apt-get is not available"
    log "installing $pkg"
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        apt-get update -q >&2 || die "apt-get update failed"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2 \
        || die "apt-get install $pkg failed"
    command -v "$bin" >/dev/null 2>&1 || die "$pkg installed but $bin is not on PATH"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_until <seconds> <command...>
wait_until() {
    local secs=$1; shift
    local i
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

etcd_healthy() {
    # The v3 JSON gateway answers a range on an empty key set.
    curl -sf -m 2 -X POST -d '{"key":"AA=="}' "http://127.0.0.1:$ETCD_CLIENT_PORT/v3/kv/range" \
        | grep -q '"header"'
}

redis_healthy() {
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

start_etcd() {
    ensure_pkg etcd etcd-server
    command -v curl >/dev/null 2>&1 || ensure_pkg curl curl
    if pid_alive "$ETCD_PID" && etcd_healthy; then
        log "etcd already running (pid $(cat "$ETCD_PID"))"
        return 0
    fi
    mkdir -p "$ETCD_DATA"
    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT (data $ETCD_DATA)"
    setsid etcd \
        --name te-rs-test \
        --data-dir "$ETCD_DATA" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "te-rs-test=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state new \
        >"$ETCD_LOG" 2>&1 </dev/null &
    echo $! >"$ETCD_PID"
    if ! wait_until 20 etcd_healthy; then
        tail -20 "$ETCD_LOG" >&2 || true
        die "etcd did not answer on 127.0.0.1:$ETCD_CLIENT_PORT within 20 s (log: $ETCD_LOG)"
    fi
    log "etcd up (pid $(cat "$ETCD_PID"))"
}

start_redis() {
    ensure_pkg redis-server redis-server
    command -v redis-cli >/dev/null 2>&1 || ensure_pkg redis-cli redis-tools
    if pid_alive "$REDIS_PID" && redis_healthy; then
        log "redis already running (pid $(cat "$REDIS_PID"))"
        return 0
    fi
    log "starting redis on 127.0.0.1:$REDIS_PORT (no persistence)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --protected-mode yes --daemonize yes --pidfile "$REDIS_PID" \
        --logfile "$REDIS_LOG" --dir "$STATE_DIR" \
        || die "redis-server failed to start (log: $REDIS_LOG)"
    if ! wait_until 20 redis_healthy; then
        tail -20 "$REDIS_LOG" >&2 || true
        die "redis did not answer on 127.0.0.1:$REDIS_PORT within 20 s (log: $REDIS_LOG)"
    fi
    log "redis up (pid $(cat "$REDIS_PID"))"
}

stop_one() {
    local name=$1 pidfile=$2
    if pid_alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        log "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    start)
        mkdir -p "$STATE_DIR"
        start_etcd
        start_redis
        print_env
        ;;
    stop)
        stop_one etcd "$ETCD_PID"
        stop_one redis "$REDIS_PID"
        rm -rf "$ETCD_DATA"
        ;;
    env)
        print_env
        ;;
    restart)
        mkdir -p "$STATE_DIR"
        case "${2:-}" in
            etcd) stop_one etcd "$ETCD_PID"; start_etcd ;;
            redis) stop_one redis "$REDIS_PID"; start_redis ;;
            *) die "restart needs 'etcd' or 'redis'" ;;
        esac
        ;;
    *)
        echo "usage: $0 start|stop|env|restart etcd|redis" >&2
        exit 2
        ;;
esac
