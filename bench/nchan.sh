#!/usr/bin/env bash
# The reference in the same run as bench/path.sh: nginx + nchan + Redis, two nginx servers
# (one worker each, as the gateways run one event loop each) sharing a throwaway Redis.
# Users subscribe with a WebSocket on their server (/sub/u<i>); a direct message is an HTTP
# POST to /pub/u<recipient> on the sender's server, which nchan hands through Redis to
# the recipient's server. bench/wsload.py --target nchan drives it and prints the same
# figures as for Switchboard (CPU of both nginx servers and of Redis per delivered message).
#
#   PICOWS_PYTHON=V/bin/python bench/nchan.sh
#
# Environment: RATES ["5000 10000"], DURATION [10], USERS [2000], BASE_PORT [18900].
# Installs libnginx-mod-nchan if it is missing (Debian). Everything is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RATES:=5000 10000}" "${DURATION:=10}" "${USERS:=2000}" "${BASE_PORT:=18900}"
PYTHON=${PICOWS_PYTHON:?set PICOWS_PYTHON to a python with picows and uvloop}
MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if [ ! -f "$MODULE" ]; then
    apt-get install -y nginx-light libnginx-mod-nchan >/dev/null || { apt-get update >/dev/null && apt-get install -y nginx-light libnginx-mod-nchan >/dev/null; }
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/switchboard-nchan-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/redis"
NGINX_PIDS=()
cleanup() {
    for pid in "${NGINX_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NGINX_PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    ./scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
eval "$(./scripts/redis.sh start "$WORK/redis")"
REDIS=$(cat "$WORK/redis/redis.pid")
redis_hostport=${SWITCHBOARD_REDIS_URL#redis://}
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(nginx -v 2>&1), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan), Redis pid $REDIS"

start_nginx() {
    local port=$1 dir=$WORK/nginx-$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 19000; }
http {
    access_log off;
    # One pipelined keep-alive connection per server carries every publish.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    upstream redis_server { nchan_redis_server "redis://$redis_hostport"; }
    server {
        listen 127.0.0.1:$port;
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber websocket;
            nchan_channel_id \$1;
            nchan_redis_pass redis_server;
        }
        location ~ ^/pub/(\w+)$ {
            nchan_publisher http;
            nchan_channel_id \$1;
            nchan_redis_pass redis_server;
            nchan_message_buffer_length 0;
        }
    }
}
CONF
    nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    NGINX_PIDS+=("$!")
    for _ in $(seq 1 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
}

start_nginx $((BASE_PORT + 1))
start_nginx $((BASE_PORT + 2))
sleep 1
# The master and its worker: both count.
pids=()
for master in "${NGINX_PIDS[@]}"; do
    pids+=(--gateway-pid "$master")
    for worker in $(pgrep -P "$master"); do pids+=(--gateway-pid "$worker"); done
done
for rate in $RATES; do
    command=("$PYTHON" bench/wsload.py direct --target nchan
        --gateway "ws://127.0.0.1:$((BASE_PORT + 1))/ws" --gateway "ws://127.0.0.1:$((BASE_PORT + 2))/ws"
        "${pids[@]}" --broker-pid "$REDIS" --users "$USERS" --rate "$rate" --duration "$DURATION" --label nchan --json)
    echo "# direct, nginx+nchan+Redis, $rate/s: ${command[*]}"
    timeout $((DURATION + 200)) "${command[@]}" || { echo "# the generator failed; nginx said:"; for log in "$WORK"/nginx-*/error.log; do tail -n 5 "$log"; done; }
done
