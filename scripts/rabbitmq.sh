#!/usr/bin/env bash
# Starts or stops a throwaway RabbitMQ node on loopback, in a folder of its own.
#
#   scripts/rabbitmq.sh start DIR [AMQP_PORT] [DIST_PORT]   prints export lines: SWITCHBOARD_AMQP_URL,
#                                                           SWITCHBOARD_AMQPS_URL (TLS on AMQP_PORT+1, throwaway CA),
#                                                           SWITCHBOARD_RABBITMQ_DIR
#   scripts/rabbitmq.sh stop DIR
#   scripts/rabbitmq.sh ctl DIR ARGS…                         runs rabbitmqctl against that node
#
# The node gets its own name, ports, data and log folders, so it never touches a
# broker that is already running. Debian's rabbitmq-server wrapper switches to the
# rabbitmq user when run as root, so DIR is handed to that user.
set -euo pipefail

command=${1:?start|stop|ctl}
dir=${2:?folder}

node_env() {
    # shellcheck disable=SC1091
    source "$dir/node.env"
}

ctl() {
    node_env
    HOME="$dir" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"
}

case "$command" in
start)
    # Every port below Linux's ephemeral range (32768 and up): a port the kernel handed to
    # an outgoing connection (a load test's thousands) cannot be taken when the node starts.
    amqp_port=${3:-$((20000 + RANDOM % 6000))}
    dist_port=${4:-$((amqp_port + 6000))}
    epmd_port=$((dist_port + 1))
    mkdir -p "$dir/mnesia" "$dir/log"
    node="sbtest$$x$amqp_port@localhost"
    cat >"$dir/node.env" <<ENV
export ERL_EPMD_PORT=$epmd_port
export RABBITMQ_NODENAME=$node
export RABBITMQ_NODE_PORT=$amqp_port
export RABBITMQ_DIST_PORT=$dist_port
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_MNESIA_BASE=$dir/mnesia
export RABBITMQ_LOG_BASE=$dir/log
export RABBITMQ_PID_FILE=$dir/rabbitmq.pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
export RABBITMQ_CONFIG_FILE=$dir/rabbitmq
export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
ENV
    echo "[]." >"$dir/enabled_plugins"
    tls_port=$((amqp_port + 1))
    # A throwaway CA and a server certificate for localhost, for the amqps:// listener;
    # a second, unrelated CA lets tests check that verification really happens.
    mkdir -p "$dir/tls"
    (
        cd "$dir/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=switchboard-test-ca" 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=unrelated-ca" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
    )
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
CONF
    echo "[]." >"$dir/advanced.config"
    if id rabbitmq >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chown -R rabbitmq:rabbitmq "$dir"; chmod 755 "$dir"; fi
    node_env
    # A name server of the node's own, on its own port, so that stopping it touches nothing else.
    epmd -port "$epmd_port" -address 127.0.0.1 >"$dir/epmd.out" 2>&1 </dev/null &
    echo $! >"$dir/epmd.pid"
    # The server detaches from this shell; its PID is in $RABBITMQ_PID_FILE.
    HOME="$dir" setsid rabbitmq-server >"$dir/server.out" 2>&1 </dev/null &
    echo $! >"$dir/wrapper.pid"
    started=""
    for _ in $(seq 1 120); do
        if ctl await_startup --timeout 30 >/dev/null 2>&1; then started=yes; break; fi
        sleep 0.5
    done
    if [ -z "$started" ]; then
        echo "RabbitMQ did not start; see $dir/server.out and $dir/log" >&2
        tail -20 "$dir/server.out" >&2 || true
        "$0" stop "$dir"
        exit 1
    fi
    echo "export SWITCHBOARD_AMQP_URL=amqp://guest:guest@127.0.0.1:$amqp_port/"
    echo "export SWITCHBOARD_AMQPS_URL='amqps://guest:guest@localhost:$tls_port/?cacertfile=$dir/tls/ca.pem'"
    echo "export SWITCHBOARD_RABBITMQ_DIR=$dir"
    ;;
stop)
    [ -f "$dir/node.env" ] || exit 0
    node_env
    ctl stop >/dev/null 2>&1 || true
    if [ -f "$RABBITMQ_PID_FILE" ]; then
        pid=$(cat "$RABBITMQ_PID_FILE")
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    if [ -f "$dir/wrapper.pid" ]; then kill "$(cat "$dir/wrapper.pid")" 2>/dev/null || true; fi
    if [ -f "$dir/epmd.pid" ]; then kill "$(cat "$dir/epmd.pid")" 2>/dev/null || true; fi
    ;;
ctl)
    shift 2
    ctl "$@"
    ;;
*)
    echo "usage: $0 start|stop|ctl DIR …" >&2
    exit 2
    ;;
esac
