#!/bin/sh
# RabbitMQ users for a Switchboard deployment, each allowed only what it needs
# (docs/security.md, "The backplane is trusted"). Gateways write frames to their clients
# as they come from the main exchange, so only gateways may publish there:
#
#   user      configure                       write                           read
#   gateway   main, events, its own queues    main, events, its own queues    main, its own queues
#   worker    its own queues                  its own queues                  its own queues, events
#
# (queue.bind needs write on the queue and read on the exchange; basic.publish needs
# write on the exchange.) So a worker can bind its queues to the events exchange and
# consume, but cannot publish to the main exchange, bind a queue to it, publish to the
# events exchange or declare either exchange (a passive declare is allowed): it sends
# to users and rooms through a gateway's POST /v1/publish (docs/workers.md).
#
#   RABBITMQ_GATEWAY_PASSWORD=… RABBITMQ_WORKER_PASSWORD=… deploy/rabbitmq/users.sh
#
# Idempotent: a user that exists gets the password and permissions again. Passwords go
# to rabbitmqctl on standard input, never on its command line. Variables [defaults]:
#   RABBITMQCTL          the rabbitmqctl command [rabbitmqctl], e.g. "scripts/rabbitmq.sh ctl DIR"
#   RABBITMQ_VHOST       [/]
#   SB_EXCHANGE          the gateways' --exchange [switchboard]
#   SB_EVENTS_EXCHANGE   the gateways' --events-exchange [switchboard.events]
#   SB_GATEWAY_USER      [switchboard-gateway]; its queues are switchboard.gateway.<gateway id>
#   SB_WORKER_USER       [switchboard-worker]
#   SB_WORKER_QUEUES     prefix of the workers' queue names [worker.]
#   RABBITMQ_GATEWAY_PASSWORD, RABBITMQ_WORKER_PASSWORD   required
# docker-compose.yml runs it in the broker's container; elsewhere run it once against
# the broker, as its administrator, before the gateways start.
set -eu

ctl=${RABBITMQCTL:-rabbitmqctl}
vhost=${RABBITMQ_VHOST:-/}
exchange=${SB_EXCHANGE:-switchboard}
events=${SB_EVENTS_EXCHANGE:-switchboard.events}
gateway_user=${SB_GATEWAY_USER:-switchboard-gateway}
worker_user=${SB_WORKER_USER:-switchboard-worker}
worker_queues=${SB_WORKER_QUEUES:-worker.}
gateway_password=${RABBITMQ_GATEWAY_PASSWORD:?set RABBITMQ_GATEWAY_PASSWORD}
worker_password=${RABBITMQ_WORKER_PASSWORD:?set RABBITMQ_WORKER_PASSWORD}

# A name as a regular expression that matches exactly it.
quote() { printf '%s' "$1" | sed 's/[][\\.*^$+?(){}|]/\\&/g'; }

E=$(quote "$exchange")
V=$(quote "$events")
G='switchboard\.gateway\..+'
W="$(quote "$worker_queues").+"

# Wait (bounded: 60 tries) until the node answers, for a broker that is still starting.
tries=0
until $ctl await_startup >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "users.sh: the broker did not answer ($ctl await_startup)" >&2
        exit 1
    fi
    sleep 1
done

user() { # name password
    if $ctl list_users --quiet --no-table-headers | cut -f1 | grep -qxF "$1"; then
        printf '%s\n' "$2" | $ctl change_password "$1" >/dev/null
    else
        printf '%s\n' "$2" | $ctl add_user "$1" >/dev/null
    fi
}

user "$gateway_user" "$gateway_password"
$ctl set_permissions -p "$vhost" "$gateway_user" "^($E|$V|$G)\$" "^($E|$V|$G)\$" "^($E|$G)\$" >/dev/null
user "$worker_user" "$worker_password"
$ctl set_permissions -p "$vhost" "$worker_user" "^$W\$" "^$W\$" "^($W|$V)\$" >/dev/null
echo "users.sh: $gateway_user and $worker_user on vhost $vhost (main exchange $exchange, events $events, worker queues $worker_queues*)"
