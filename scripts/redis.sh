#!/usr/bin/env bash
# Starts or stops a throwaway Redis server on loopback, in a folder of its own.
#
#   scripts/redis.sh start DIR [PORT]   prints export lines: SWITCHBOARD_REDIS_URL (redis://127.0.0.1:PORT),
#                                       SWITCHBOARD_REDIS_DIR; the server's PID is in DIR/redis.pid
#   scripts/redis.sh stop DIR
#   scripts/redis.sh cli DIR ARGS…       runs redis-cli against that server
#
# No persistence (no RDB snapshots, no AOF): the server is a pub/sub backplane for tests
# and benchmarks and forgets everything when stopped. Stopping touches only the PID in
# DIR/redis.pid, never another Redis on the machine.
set -euo pipefail

command=${1:?start|stop|cli}
dir=${2:?folder}

case "$command" in
start)
    # Below Linux's ephemeral range (32768 and up), so no outgoing connection holds it.
    port=${3:-$((20000 + RANDOM % 12000))}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    echo "$port" >"$dir/port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --save '' --appendonly no >"$dir/server.out" 2>&1 </dev/null
    started=""
    for _ in $(seq 1 100); do
        if [ -s "$dir/redis.pid" ] && redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            started=yes
            break
        fi
        sleep 0.1
    done
    if [ -z "$started" ]; then
        echo "Redis did not start; see $dir/redis.log" >&2
        tail -20 "$dir/redis.log" >&2 2>/dev/null || true
        "$0" stop "$dir"
        exit 1
    fi
    echo "export SWITCHBOARD_REDIS_URL=redis://127.0.0.1:$port"
    echo "export SWITCHBOARD_REDIS_DIR=$dir"
    ;;
stop)
    [ -f "$dir/redis.pid" ] || exit 0
    pid=$(cat "$dir/redis.pid")
    [ -n "$pid" ] || exit 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/redis.pid"
    ;;
cli)
    shift 2
    redis-cli -h 127.0.0.1 -p "$(cat "$dir/port")" "$@"
    ;;
*)
    echo "usage: $0 start|stop|cli DIR …" >&2
    exit 2
    ;;
esac
