#!/usr/bin/env bash
# Starts or stops a throwaway Redis server on loopback, in a folder of its own.
#
#   scripts/redis.sh start DIR [PORT]   prints export lines: SWITCHBOARD_REDIS_URL (redis://127.0.0.1:PORT),
#                                       SWITCHBOARD_REDISS_URL (TLS on PORT+1, a throwaway CA in DIR/tls),
#                                       SWITCHBOARD_REDIS_DIR; the server's PID is in DIR/redis.pid
#   scripts/redis.sh stop DIR
#   scripts/redis.sh cli DIR ARGS…       runs redis-cli against that server
#
#   scripts/redis.sh sentinel-start DIR  a master, one replica and three sentinels (master name
#                                        `sbmaster`); prints SWITCHBOARD_REDIS_SENTINEL_URL
#                                        (redis+sentinel://…/sbmaster) and SWITCHBOARD_REDIS_SENTINEL_DIR
#   scripts/redis.sh sentinel-kill-master DIR   kill -9 of whichever server is the master now
#   scripts/redis.sh sentinel-master DIR        the master's port, as the first sentinel sees it
#   scripts/redis.sh sentinel-stop DIR
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
    tls_port=$((port + 1))
    # A throwaway CA and a server certificate for the TLS listener (kept across restarts).
    [ -f "$dir/tls/server.pem" ] || "$(dirname "$0")/throwaway-tls.sh" "$dir/tls" switchboard-test-redis-ca
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
        --tls-port "$tls_port" --tls-cert-file "$dir/tls/server.pem" --tls-key-file "$dir/tls/server.key" \
        --tls-ca-cert-file "$dir/tls/ca.pem" --tls-auth-clients no \
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
    echo "export SWITCHBOARD_REDISS_URL='rediss://127.0.0.1:$tls_port?cacertfile=$dir/tls/ca.pem'"
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
sentinel-start)
    # Master on base, replica on base+1, sentinels on base+2…base+4; each writes DIR/<port>.pid.
    # 10000-12904: apart from the single server's (20000-32000) and the brokers' ports.
    base=${3:-$((10000 + RANDOM % 2900))}
    command -v redis-sentinel >/dev/null || { echo "redis-sentinel is not installed (scripts/install-deps.sh)" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Whatever started is stopped again when a step fails.
    trap '"$0" sentinel-stop "$dir"' ERR
    echo "$base" >"$dir/base"
    for role in master replica; do
        port=$base
        extra=()
        if [ "$role" = replica ]; then port=$((base + 1)); extra=(--replicaof 127.0.0.1 "$base"); fi
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes --pidfile "$dir/$port.pid" \
            --logfile "$dir/$port.log" --save '' --appendonly no --dbfilename "$port.rdb" "${extra[@]}" >/dev/null 2>&1 </dev/null
    done
    sentinels=()
    for index in 2 3 4; do
        port=$((base + index))
        # A sentinel rewrites its configuration file, so each has its own.
        cat >"$dir/sentinel-$port.conf" <<CONF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/$port.pid
logfile $dir/$port.log
dir $dir
sentinel monitor sbmaster 127.0.0.1 $base 2
sentinel down-after-milliseconds sbmaster 1000
sentinel failover-timeout sbmaster 5000
sentinel parallel-syncs sbmaster 1
CONF
        redis-sentinel "$dir/sentinel-$port.conf" >/dev/null 2>&1 </dev/null
        sentinels+=("127.0.0.1:$port")
    done
    # Ready when the replica has synced and every sentinel knows the master, the replica (a
    # sentinel learns of replicas from the master's INFO, every 10 s) and the other two.
    ready=""
    for _ in $(seq 1 300); do
        if redis-cli -p $((base + 1)) info replication 2>/dev/null | grep -q "master_link_status:up"; then
            known=0
            for index in 2 3 4; do
                view=$(redis-cli -p $((base + index)) sentinel master sbmaster 2>/dev/null || true)
                if echo "$view" | grep -A1 -x "num-other-sentinels" | grep -qx 2 && echo "$view" | grep -A1 -x "num-slaves" | grep -qx 1; then
                    known=$((known + 1))
                fi
            done
            if [ "$known" -eq 3 ]; then ready=yes; break; fi
        fi
        sleep 0.1
    done
    trap - ERR
    if [ -z "$ready" ]; then
        echo "the Sentinel setup did not come up within 30 s; see $dir/*.log" >&2
        "$0" sentinel-stop "$dir"
        exit 1
    fi
    echo "export SWITCHBOARD_REDIS_SENTINEL_URL=redis+sentinel://$(IFS=,; echo "${sentinels[*]}")/sbmaster"
    echo "export SWITCHBOARD_REDIS_SENTINEL_DIR=$dir"
    ;;
sentinel-master)
    redis-cli -p $(($(cat "$dir/base") + 2)) sentinel get-master-addr-by-name sbmaster | sed -n 2p
    ;;
sentinel-kill-master)
    port=$("$0" sentinel-master "$dir")
    pid=$(cat "$dir/$port.pid")
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/$port.pid"
    echo "$port"
    ;;
sentinel-stop)
    # All at once: a server waits a moment for its peers on SIGTERM; nothing here keeps data.
    pids=()
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        pids+=("$(cat "$pidfile")")
        rm -f "$pidfile"
    done
    [ ${#pids[@]} -gt 0 ] || exit 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 30); do
        alive=""
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=yes; done
        [ -n "$alive" ] || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start|stop|cli|sentinel-start|sentinel-master|sentinel-kill-master|sentinel-stop DIR …" >&2
    exit 2
    ;;
esac
