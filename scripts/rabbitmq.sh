#!/usr/bin/env bash
# Starts or stops a throwaway RabbitMQ node, or a cluster of them, on loopback, in a folder of its own.
#
#   scripts/rabbitmq.sh start DIR [AMQP_PORT] [DIST_PORT]   prints export lines: SWITCHBOARD_AMQP_URL,
#                                                           SWITCHBOARD_AMQPS_URL (TLS on AMQP_PORT+1, throwaway CA),
#                                                           SWITCHBOARD_RABBITMQ_DIR
#   scripts/rabbitmq.sh stop DIR
#   scripts/rabbitmq.sh ctl DIR ARGS…                         runs rabbitmqctl against that node
#
#   scripts/rabbitmq.sh cluster-start DIR [N] [AMQP_PORT]
#                                               N nodes (default 3) in DIR/node1…N, joined into one cluster,
#                                               node i on AMQP_PORT+2(i-1) (TLS on the next port);
#                                               prints SWITCHBOARD_AMQP_CLUSTER_URLS (comma-separated, node order)
#                                               and SWITCHBOARD_RABBITMQ_CLUSTER_DIR
#   scripts/rabbitmq.sh cluster-stop DIR        stops every node and the cluster's name server
#   scripts/rabbitmq.sh node-kill DIR/nodeI…    kill -9 of those nodes' Erlang VMs (a crash)
#   scripts/rabbitmq.sh node-stop DIR/nodeI     a clean stop of that node
#   scripts/rabbitmq.sh node-start DIR/nodeI…   starts stopped or killed nodes again, all at once; they rejoin their cluster
#
# A node gets its own name, ports, data and log folders, so it never touches a
# broker that is already running. Debian's rabbitmq-server wrapper switches to the
# rabbitmq user when run as root, so DIR is handed to that user; that user's Erlang
# cookie (/var/lib/rabbitmq/.erlang.cookie) is what lets the nodes of a cluster talk.
# The nodes of a cluster share one name server (epmd) on a port of their own.
set -euo pipefail

command=${1:?start|stop|ctl|cluster-start|cluster-stop|node-kill|node-stop|node-start}
dir=${2:?folder}

node_env() {
    # shellcheck disable=SC1091
    source "$dir/node.env"
}

ctl() {
    node_env
    HOME="$dir" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"
}

# write_node AMQP_PORT DIST_PORT EPMD_PORT NODE_NAME: the node's environment, TLS files and config in $dir.
write_node() {
    local amqp_port=$1 dist_port=$2 epmd_port=$3 node=$4
    mkdir -p "$dir/mnesia" "$dir/log"
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
    echo "$amqp_port" >"$dir/amqp.port"
    echo "[]." >"$dir/enabled_plugins"
    local tls_port=$((amqp_port + 1))
    # A throwaway CA and a server certificate for the amqps:// listener.
    "$(dirname "$0")/throwaway-tls.sh" "$dir/tls"
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
}

# start_epmd FOLDER PORT: a name server of our own, so that stopping it touches nothing else.
start_epmd() {
    epmd -port "$2" -address 127.0.0.1 >"$1/epmd.out" 2>&1 </dev/null &
    echo $! >"$1/epmd.pid"
}

# launch_node: starts the node in $dir in the background (it detaches; its PID lands in $RABBITMQ_PID_FILE).
launch_node() {
    node_env
    if [ -f "$RABBITMQ_PID_FILE" ] && kill -0 "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null; then
        return 0 # running already: keep its PID file, so that stop can still reach it
    fi
    rm -f "$RABBITMQ_PID_FILE"
    HOME="$dir" setsid rabbitmq-server >"$dir/server.out" 2>&1 </dev/null &
    echo $! >"$dir/wrapper.pid"
}

# await_node: waits until the node in $dir has booted: up to 120 tries of `await_startup`
# (each bounded by 30 s when the node answers but is still booting); false after that.
await_node() {
    for _ in $(seq 1 120); do
        if ctl await_startup --timeout 30 >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "RabbitMQ did not start; see $dir/server.out and $dir/log" >&2
    tail -20 "$dir/server.out" >&2 || true
    return 1
}

stop_node() {
    [ -f "$dir/node.env" ] || return 0
    node_env
    ctl stop >/dev/null 2>&1 || true
    if [ -f "$RABBITMQ_PID_FILE" ]; then
        pid=$(cat "$RABBITMQ_PID_FILE")
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    if [ -f "$dir/wrapper.pid" ]; then kill "$(cat "$dir/wrapper.pid")" 2>/dev/null || true; fi
}

case "$command" in
start)
    # Every port below Linux's ephemeral range (32768 and up): a port the kernel handed to
    # an outgoing connection (a load test's thousands) cannot be taken when the node starts.
    amqp_port=${3:-$((20000 + RANDOM % 6000))}
    dist_port=${4:-$((amqp_port + 6000))}
    epmd_port=$((dist_port + 1))
    write_node "$amqp_port" "$dist_port" "$epmd_port" "sbtest$$x$amqp_port@localhost"
    start_epmd "$dir" "$epmd_port"
    launch_node
    if ! await_node; then
        "$0" stop "$dir"
        exit 1
    fi
    echo "export SWITCHBOARD_AMQP_URL=amqp://guest:guest@127.0.0.1:$amqp_port/"
    echo "export SWITCHBOARD_AMQPS_URL='amqps://guest:guest@localhost:$((amqp_port + 1))/?cacertfile=$dir/tls/ca.pem'"
    echo "export SWITCHBOARD_RABBITMQ_DIR=$dir"
    ;;
stop)
    stop_node
    if [ -f "$dir/epmd.pid" ]; then kill "$(cat "$dir/epmd.pid")" 2>/dev/null || true; fi
    ;;
ctl)
    shift 2
    ctl "$@"
    ;;
cluster-start)
    count=${3:-3}
    mkdir -p "$dir"
    cluster=$(cd "$dir" && pwd)
    # Node i: AMQP on base+2(i-1) (TLS on the next port), distribution on base+3000+i; one
    # epmd for all. 13000-19100: apart from the single node's 20000-32001 (start, above).
    base=${4:-$((13000 + RANDOM % 3000))}
    epmd_port=$((base + 3000 + count + 1))
    start_epmd "$cluster" "$epmd_port"
    urls=()
    for i in $(seq 1 "$count"); do
        dir="$cluster/node$i"
        write_node "$((base + 2 * i - 2))" "$((base + 3000 + i))" "$epmd_port" "sbcluster$$n$i@localhost"
        launch_node
        urls+=("amqp://guest:guest@127.0.0.1:$((base + 2 * i - 2))/")
    done
    if id rabbitmq >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chmod 755 "$cluster"; fi
    failed=""
    for i in $(seq 1 "$count"); do
        dir="$cluster/node$i"
        await_node || failed=yes
    done
    if [ -z "$failed" ]; then
        dir="$cluster/node1"
        node_env
        first=$RABBITMQ_NODENAME
        for i in $(seq 2 "$count"); do
            dir="$cluster/node$i"
            { ctl stop_app && ctl join_cluster "$first" && ctl start_app; } >"$dir/join.out" 2>&1 || { failed=yes; cat "$dir/join.out" >&2; }
        done
    fi
    if [ -n "$failed" ]; then
        "$0" cluster-stop "$cluster"
        exit 1
    fi
    echo "export SWITCHBOARD_AMQP_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
    echo "export SWITCHBOARD_RABBITMQ_CLUSTER_DIR=$cluster"
    ;;
cluster-stop)
    cluster=$dir
    for node_dir in "$cluster"/node*; do
        [ -d "$node_dir" ] || continue
        dir=$node_dir
        stop_node &
    done
    wait
    if [ -f "$cluster/epmd.pid" ]; then kill "$(cat "$cluster/epmd.pid")" 2>/dev/null || true; fi
    ;;
node-kill)
    for dir in "${@:2}"; do
        node_env
        if [ -f "$RABBITMQ_PID_FILE" ]; then
            pid=$(cat "$RABBITMQ_PID_FILE")
            kill -9 "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            # Gone: a later stop must not signal whatever process gets this PID next.
            rm -f "$RABBITMQ_PID_FILE"
        fi
        if [ -f "$dir/wrapper.pid" ]; then kill "$(cat "$dir/wrapper.pid")" 2>/dev/null || true; fi
    done
    ;;
node-stop)
    stop_node
    ;;
node-start)
    # All at once: nodes of a cluster that went down together wait for each other to boot.
    for dir in "${@:2}"; do launch_node; done
    failed=""
    for dir in "${@:2}"; do await_node || failed=yes; done
    [ -z "$failed" ]
    ;;
*)
    echo "usage: $0 start|stop|ctl|cluster-start|cluster-stop|node-kill|node-stop|node-start DIR …" >&2
    exit 2
    ;;
esac
