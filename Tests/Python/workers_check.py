"""Background workers and the server publish API, end to end on a real RabbitMQ (docs/workers.md).

    SWITCHBOARD_AMQP_URL=amqp://… [SWITCHBOARD_RABBITMQ_DIR=…] python workers_check.py PATH/TO/switchboard

Starts two gateways (gw-1, gw-2, --auth none) on one RabbitMQ with a main exchange and
an events exchange of this run's own (`sbw.<random>`, `sbw.<random>.events`) and a
random API key, a worker (pika, BlockingConnection) with a durable queue bound to the
events exchange with `user.*`, `room.*` and `undelivered.user.*`, and WebSocket
clients (the `websockets` library): alice on gw-1, bob and bob.smith on gw-2.

It checks that
- every client message is also published to the events exchange, under `user.<word>`
  or `room.<word>`, with exactly the bytes the recipients get (`bob.smith` →
  `user.~Ym9iLnNtaXRo`);
- a direct message to an offline user gives the sender `recipient_offline` and the
  worker both `user.carol` and `undelivered.user.carol`;
- a frame a trusted backend (here the broker's administrator) publishes to the MAIN
  exchange under `user.bob`, `room.lobby` or `broadcast` reaches the clients byte for
  byte: the gateways do not check it, so the broker's permissions must (docs/security.md);
- nothing but gateway queues is bound to the main exchange;
- the RabbitMQ users of deploy/rabbitmq/users.sh, created for this run's exchanges
  (`sbw-<random>-gateway`, `sbw-<random>-worker`): both gateways run as the gateway user;
  the worker user can bind a queue of its own to the events exchange and consume events
  from it, but publishing to the main exchange (a forged `from`) or to the events
  exchange, and binding a queue to the main exchange, are refused by the broker with
  403 ACCESS_REFUSED, and nothing forged reaches a client (this and the binding listing
  need SWITCHBOARD_RABBITMQ_DIR, as scripts/rabbitmq.sh prints it, for rabbitmqctl);
- `POST /v1/publish`: 202 routed / recipient_offline, the frames for user, room and
  broadcast targets, 401, 400, 413, 404 with the API off, 503 while draining, and that
  API publishes (and the worker's own frames) do not appear on the events exchange;
- the gateways count the events the broker confirmed in /metrics.

Every wait is bounded (10 s); the gateways are stopped by PID, the workers' queues,
both exchanges and the two users are deleted at the end.
"""
import asyncio
import base64
import concurrent.futures
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pika.exceptions
import websockets

from harness import CheckFailed, Gateway, free_port, http_get

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT = 10  # seconds, the longest any single wait may take
START_WAIT = 30  # seconds a gateway has to answer /readyz (a debug build starts slowly on a busy machine)


def word(identifier):
    """The routing word of a user or room id (docs/protocol.md, "Ids")."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", identifier):
        return identifier
    return "~" + base64.urlsafe_b64encode(identifier.encode("utf-8")).decode("ascii").rstrip("=")


def http_post(url, body, headers, timeout=WAIT):
    """POSTs bytes; returns (status, parsed JSON body or the raw bytes when it is not JSON)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


class Worker:
    """A background worker as docs/workers.md describes one, driven step by step.

    pika's BlockingConnection is not thread-safe, so every call runs on one thread of
    its own (`self.pool`); the asyncio loop that drives the WebSocket clients awaits it.
    """

    def __init__(self, amqp_url, exchange, events_exchange, queue):
        self.url = amqp_url
        self.exchange = exchange
        self.events_exchange = events_exchange
        self.queue = queue
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker")
        self.connection = self.channel = self.publish_channel = None
        self.backlog = []  # (routing_key, body, properties) taken from the queue, not yet expected

    async def call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    # On the worker's thread.

    def setup(self):
        params = pika.URLParameters(self.url)
        params.socket_timeout = WAIT
        params.blocked_connection_timeout = WAIT
        self.connection = pika.BlockingConnection(params)
        # The gateway declares the events exchange itself: a passive declare fails if it did not.
        probe = self.connection.channel()
        try:
            probe.exchange_declare(self.events_exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            raise CheckFailed(f"the gateways did not declare the events exchange {self.events_exchange!r}: {e}")
        if probe.is_open:
            probe.close()
        # Declared exactly as the gateway does (topic, durable); a different declaration is
        # refused by the broker with PRECONDITION_FAILED.
        self.channel = self.connection.channel()
        try:
            self.channel.exchange_declare(self.events_exchange, exchange_type="topic", durable=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            raise CheckFailed(f"declaring the events exchange as documented (topic, durable) failed: {e}")
        self.channel.queue_declare(self.queue, durable=True)
        for key in ("user.*", "room.*", "undelivered.user.*"):
            self.channel.queue_bind(self.queue, self.events_exchange, routing_key=key)
        self.publish_channel = self.connection.channel()
        self.publish_channel.confirm_delivery()

    def _poll(self):
        method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
        if method is None:
            return False
        self.backlog.append((method.routing_key, body, properties))
        return True

    def take(self, key, seconds=WAIT):
        """The first event with routing key `key`, from the backlog or the queue."""
        deadline = time.time() + seconds
        while True:
            for i, event in enumerate(self.backlog):
                if event[0] == key:
                    return self.backlog.pop(i)
            if time.time() > deadline:
                seen = [k for k, _, _ in self.backlog]
                raise CheckFailed(f"worker: no event {key!r} on {self.events_exchange!r} within {seconds} s "
                                  f"(got instead: {seen or 'nothing'})")
            if not self._poll():
                self.connection.sleep(0.05)

    def drain(self):
        """Everything that is on the queue now, plus the backlog; empties both."""
        while self._poll():
            pass
        events, self.backlog = self.backlog, []
        return events

    def publish(self, key, body):
        """Publishes a frame to the MAIN exchange, as a worker sends to users and rooms."""
        try:
            self.publish_channel.basic_publish(
                self.exchange, key, body, mandatory=True,
                properties=pika.BasicProperties(content_type="application/json"))
        except pika.exceptions.UnroutableError:
            raise CheckFailed(f"worker: publish to {self.exchange!r} with key {key!r} came back unroutable "
                              "(no gateway bound to it)")
        except pika.exceptions.NackError:
            raise CheckFailed(f"worker: the broker nacked the publish to {key!r}")

    def close(self):
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:
            pass


class Client:
    """A WebSocket client that keeps frames it was not yet asked about."""

    def __init__(self, name, ws):
        self.name = name
        self.ws = ws
        self.inbox = []

    @classmethod
    async def connect(cls, port, user, gateway_id):
        url = f"ws://127.0.0.1:{port}/ws?user={urllib.parse.quote(user, safe='')}"
        try:
            ws = await asyncio.wait_for(websockets.connect(url), WAIT)
        except Exception as e:
            raise CheckFailed(f"{user}: cannot connect to {gateway_id}: {e!r}")
        client = cls(user, ws)
        welcome = json.loads(await client.expect(lambda f: json.loads(f).get("type") == "welcome", "welcome"))
        if welcome != {"type": "welcome", "user": user, "gateway": gateway_id}:
            raise CheckFailed(f"{user}: unexpected welcome {welcome}")
        return client

    async def send(self, text):
        await self.ws.send(text)

    async def expect(self, match, what, seconds=WAIT):
        """The first frame (text) equal to `match`, or for which `match(text)` is true."""
        test = match if callable(match) else (lambda text: text == match)
        for i, frame in enumerate(self.inbox):
            if test(frame):
                return self.inbox.pop(i)
        deadline = time.time() + seconds
        while True:
            left = deadline - time.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                frame = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                raise CheckFailed(f"{self.name}: no {what} within {seconds} s; wanted {match if not callable(match) else '…'}"
                                  f"; got instead: {self.inbox or 'nothing'}")
            except websockets.exceptions.ConnectionClosed as e:
                raise CheckFailed(f"{self.name}: connection closed while waiting for {what}: {e}")
            if isinstance(frame, bytes):
                raise CheckFailed(f"{self.name}: binary frame {frame!r}")
            if test(frame):
                return frame
            self.inbox.append(frame)

    async def ack(self, frame_id):
        return await self.expect(json.dumps({"type": "ack", "id": frame_id}, separators=(",", ":")), f"ack {frame_id}")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass


def direct_frame(sender, to, data):
    return '{"type":"direct","from":' + json.dumps(sender) + ',"to":' + json.dumps(to) + ',"data":' + data + '}'


def room_frame(room, sender, data):
    return '{"type":"room","room":' + json.dumps(room) + ',"from":' + json.dumps(sender) + ',"data":' + data + '}'


def broadcast_frame(sender, data):
    return '{"type":"broadcast","from":' + json.dumps(sender) + ',"data":' + data + '}'


def list_bindings(rabbitmq_dir):
    """(source, destination, routing key) of every binding on the broker, via rabbitmqctl."""
    result = subprocess.run(
        [os.path.join(REPO, "scripts", "rabbitmq.sh"), "ctl", rabbitmq_dir, "list_bindings",
         "source_name", "destination_name", "routing_key", "--quiet", "--no-table-headers"],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise CheckFailed(f"rabbitmqctl list_bindings failed ({result.returncode}): {result.stderr.strip()}")
    rows = []
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append(tuple(parts))
    return rows


def rabbitmqctl(rabbitmq_dir, *args, stdin=None):
    """Runs rabbitmqctl against the test broker (scripts/rabbitmq.sh ctl); CheckFailed if it fails."""
    result = subprocess.run([os.path.join(REPO, "scripts", "rabbitmq.sh"), "ctl", rabbitmq_dir, *args],
                            input=stdin, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise CheckFailed(f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


class BrokerUsers:
    """The gateway and worker users of deploy/rabbitmq/users.sh, for this run's exchanges."""

    def __init__(self, amqp_url, rabbitmq_dir, run, exchange, events):
        self.rabbitmq_dir = rabbitmq_dir
        self.gateway_user, self.worker_user = f"sbw-{run}-gateway", f"sbw-{run}-worker"
        self.gateway_password, self.worker_password = secrets.token_hex(16), secrets.token_hex(16)
        self.worker_queues = f"sbw.{run}.worker."
        self.env = dict(os.environ, RABBITMQCTL=f"{os.path.join(REPO, 'scripts', 'rabbitmq.sh')} ctl {rabbitmq_dir}",
                        SB_EXCHANGE=exchange, SB_EVENTS_EXCHANGE=events,
                        SB_GATEWAY_USER=self.gateway_user, SB_WORKER_USER=self.worker_user,
                        SB_WORKER_QUEUES=self.worker_queues,
                        RABBITMQ_GATEWAY_PASSWORD=self.gateway_password, RABBITMQ_WORKER_PASSWORD=self.worker_password)
        parts = urllib.parse.urlsplit(amqp_url)
        self.gateway_url = self._url(parts, self.gateway_user, self.gateway_password)
        self.worker_url = self._url(parts, self.worker_user, self.worker_password)
        self.created = False

    @staticmethod
    def _url(parts, user, password):
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, ""))

    def create(self):
        """Runs deploy/rabbitmq/users.sh; returns the permissions rabbitmqctl lists for both users."""
        self.created = True
        result = subprocess.run(["sh", os.path.join(REPO, "deploy", "rabbitmq", "users.sh")], env=self.env,
                                capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise CheckFailed(f"deploy/rabbitmq/users.sh failed ({result.returncode}): "
                              f"{result.stderr.strip() or result.stdout.strip()}")
        rows = {}
        for line in rabbitmqctl(self.rabbitmq_dir, "list_permissions", "-p", "/", "--quiet", "--no-table-headers").splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[0] in (self.gateway_user, self.worker_user):
                rows[parts[0]] = tuple(parts[1:])
        return rows

    def delete(self):
        """Deletes both users; returns the problems."""
        problems = []
        if not self.created:
            return problems
        for user in (self.gateway_user, self.worker_user):
            try:
                rabbitmqctl(self.rabbitmq_dir, "delete_user", user)
            except (CheckFailed, subprocess.TimeoutExpired) as e:
                problems.append(f"deleting user {user}: {e}")
        return problems


class RestrictedWorker:
    """A worker logged in as the worker user; every call on a thread of its own, like Worker."""

    def __init__(self, amqp_url, exchange, events_exchange, queue):
        self.url = amqp_url
        self.exchange = exchange
        self.events_exchange = events_exchange
        self.queue = queue
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="restricted-worker")
        self.connection = self.channel = None

    async def call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    # On the worker's thread.

    def setup(self):
        """Passive declare of the events exchange, a queue of its own bound to it with user.*."""
        params = pika.URLParameters(self.url)
        params.socket_timeout = WAIT
        params.blocked_connection_timeout = WAIT
        try:
            self.connection = pika.BlockingConnection(params)
        except pika.exceptions.AMQPError as e:
            raise CheckFailed(f"the worker user cannot log in: {e!r}")
        self.channel = self.connection.channel()
        try:
            self.channel.exchange_declare(self.events_exchange, passive=True)
            self.channel.queue_declare(self.queue, durable=True)
            self.channel.queue_bind(self.queue, self.events_exchange, routing_key="user.*")
        except pika.exceptions.ChannelClosedByBroker as e:
            raise CheckFailed(f"the worker user could not bind {self.queue!r} to {self.events_exchange!r}: {e}")

    def consume(self, key, seconds=WAIT):
        """The body of the first event with routing key `key`, consumed (basic.consume) and acked."""
        deadline = time.time() + seconds
        for method, _, body in self.channel.consume(self.queue, inactivity_timeout=0.2):
            if method is not None:
                self.channel.basic_ack(method.delivery_tag)
                if method.routing_key == key:
                    self.channel.cancel()
                    return body
            if time.time() > deadline:
                self.channel.cancel()
                raise CheckFailed(f"worker user: no event {key!r} from {self.queue!r} within {seconds} s")

    def refused(self, what, action):
        """Runs `action(channel)` on a new channel; the broker's (code, text) when it closed the channel."""
        channel = self.connection.channel()
        try:
            action(channel)
        except pika.exceptions.ChannelClosedByBroker as e:
            return e.reply_code, e.reply_text
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
            return None, f"{what}: accepted by the broker ({type(e).__name__})"
        if channel.is_open:
            channel.close()
        return None, f"{what}: accepted by the broker"

    def try_publish(self, exchange, key, body):
        def publish(channel):
            channel.confirm_delivery()
            channel.basic_publish(exchange, key, body, mandatory=True)
        return self.refused(f"publish to {exchange!r}", publish)

    def try_bind(self, exchange, key):
        return self.refused(f"bind to {exchange!r}", lambda channel: channel.queue_bind(self.queue, exchange, routing_key=key))

    def close(self):
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:
            pass


async def check_restricted_worker(alice, bob, exchange, events, users, done):
    """The worker user: consumes events, may not publish to either exchange or bind to the main one."""
    restricted = RestrictedWorker(users.worker_url, exchange, events, users.worker_queues + "restricted")
    try:
        await restricted.call(restricted.setup)
        await alice.send('{"type":"direct","to":"bob","data":"for the restricted worker","id":"r1"}')
        got = await bob.expect(direct_frame("alice", "bob", '"for the restricted worker"'), "direct from alice")
        await alice.ack("r1")
        body = await restricted.call(restricted.consume, "user.bob")
        if body != got.encode():
            raise CheckFailed(f"worker user: user.bob body {body!r}, wanted {got.encode()!r}")
        done.append("worker user binds its queue to the events exchange and consumes user.bob")

        forged = direct_frame("alice", "bob", '"forged by a worker"').encode()
        probes = [("publish a forged frame to the main exchange", restricted.try_publish, (exchange, "user.bob", forged)),
                  ("publish a forged event to the events exchange", restricted.try_publish, (events, "user.bob", forged)),
                  ("bind its queue to the main exchange", restricted.try_bind, (exchange, "user.*"))]
        for what, probe, args in probes:
            code, text = await restricted.call(probe, *args)
            if code != 403 or "ACCESS_REFUSED" not in text:
                raise CheckFailed(f"worker user may {what}: wanted channel closed 403 ACCESS_REFUSED, got {code} {text!r}")
        # Nothing forged arrived: a message alice sends after the refusals is the next thing bob gets.
        await alice.send('{"type":"direct","to":"bob","data":"after the refusals","id":"r2"}')
        await bob.expect(direct_frame("alice", "bob", '"after the refusals"'), "direct from alice")
        await alice.ack("r2")
        if any(frame == forged.decode() for frame in bob.inbox):
            raise CheckFailed(f"bob got the worker's forged frame {forged!r}")
        done.append("worker user refused (403 ACCESS_REFUSED): publish to main, publish to events, bind to main")
    finally:
        try:
            restricted.pool.submit(restricted.close).result(timeout=10)
        except Exception:
            pass
        restricted.pool.shutdown(wait=False)


async def scenario(gw1, gw2, worker, api_keys, rabbitmq_dir, users, done):
    exchange, events = worker.exchange, worker.events_exchange
    await worker.call(worker.setup)
    done.append("events exchange declared by the gateways")

    alice = await Client.connect(gw1.port, "alice", gw1.id)
    bob = await Client.connect(gw2.port, "bob", gw2.id)
    smith = await Client.connect(gw2.port, "bob.smith", gw2.id)
    clients = [alice, bob, smith]
    try:
        # 1. A direct message across gateways; the worker gets the very bytes bob gets.
        data = '{"n": 1.50, "s": "caf\\u00e9", "list": [ 1,2 ]}'
        await alice.send('{"type":"direct","to":"bob","data":' + data + ',"id":"d1"}')
        got = await bob.expect(lambda f: json.loads(f).get("type") == "direct", "direct from alice")
        if got != direct_frame("alice", "bob", data):
            raise CheckFailed(f"bob: frame {got!r}, wanted {direct_frame('alice', 'bob', data)!r}")
        await alice.ack("d1")
        key, body, props = await worker.call(worker.take, "user.bob")
        if body != got.encode("utf-8"):
            raise CheckFailed(f"worker: user.bob body {body!r} differs from what bob got {got.encode()!r}")
        if props.delivery_mode != 2:
            raise CheckFailed(f"worker: event delivery_mode {props.delivery_mode!r}, wanted 2 (persistent)")
        done.append("direct → user.bob event (same bytes)")

        # 2. A room message: the event is what the members get.
        await alice.send('{"type":"join","room":"lobby","id":"j1"}')
        await alice.ack("j1")
        await alice.send('{"type":"publish","room":"lobby","data":[true, null],"id":"p1"}')
        got = await alice.expect(room_frame("lobby", "alice", "[true, null]"), "her own room message")
        await alice.ack("p1")
        key, body, _ = await worker.call(worker.take, "room.lobby")
        if body != got.encode("utf-8"):
            raise CheckFailed(f"worker: room.lobby body {body!r} differs from what alice got {got!r}")
        done.append("publish → room.lobby event")

        # 3. An offline recipient: recipient_offline for the sender, two events for the worker.
        await alice.send('{"type":"direct","to":"carol","data":"are you there?","id":"d2"}')
        error = json.loads(await alice.expect(lambda f: json.loads(f).get("id") == "d2", "answer to d2"))
        if error.get("type") != "error" or error.get("code") != "recipient_offline":
            raise CheckFailed(f"alice: direct to offline carol answered {error}, wanted error recipient_offline")
        wanted = direct_frame("alice", "carol", '"are you there?"').encode()
        for key in ("user.carol", "undelivered.user.carol"):
            _, body, _ = await worker.call(worker.take, key)
            if body != wanted:
                raise CheckFailed(f"worker: {key} body {body!r}, wanted {wanted!r}")
        done.append("offline carol → recipient_offline + user.carol + undelivered.user.carol")

        # 4. An id that needs encoding.
        if word("bob.smith") != "~Ym9iLnNtaXRo":
            raise CheckFailed(f"routing word of bob.smith is {word('bob.smith')}")
        await alice.send('{"type":"direct","to":"bob.smith","data":{"x":1},"id":"d3"}')
        got = await smith.expect(direct_frame("alice", "bob.smith", '{"x":1}'), "direct from alice")
        await alice.ack("d3")
        _, body, _ = await worker.call(worker.take, "user.~Ym9iLnNtaXRo")
        if body != got.encode():
            raise CheckFailed(f"worker: user.~Ym9iLnNtaXRo body {body!r}, wanted {got!r}")
        done.append("bob.smith → user.~Ym9iLnNtaXRo")

        leftover = await worker.call(worker.drain)
        if leftover:
            raise CheckFailed(f"worker: unexpected extra events {[(k, b) for k, b, _ in leftover]}")

        # 5. The worker publishes to the main exchange; gateways deliver the bytes unchanged.
        frame = direct_frame("worker", "bob", '{"job": 7, "status": "done"}')
        await worker.call(worker.publish, "user.bob", frame.encode())
        await bob.expect(frame, "the worker's direct frame")
        frame = room_frame("lobby", "worker", '"room notice"')
        await worker.call(worker.publish, "room.lobby", frame.encode())
        await alice.expect(frame, "the worker's room frame")
        frame = broadcast_frame("worker", '{"maintenance": "in 5 min"}')
        await worker.call(worker.publish, "broadcast", frame.encode())
        for client in clients:
            await client.expect(frame, "the worker's broadcast frame")
        frame = direct_frame("worker", "bob.smith", "1")
        await worker.call(worker.publish, "user." + word("bob.smith"), frame.encode())
        await smith.expect(frame, "the worker's direct frame")
        done.append("worker → main exchange user/room/broadcast delivered byte for byte")

        # 6. Only gateway queues are bound to the main exchange.
        if rabbitmq_dir:
            rows = list_bindings(rabbitmq_dir)
            # A gateway's queue is switchboard.gateway.<id>.<incarnation> (a new one per connection).
            main_rows = [(r[0], r[1].rsplit(".", 1)[0], r[2]) if r[1].startswith("switchboard.gateway.") else r
                         for r in rows if r[0] == exchange]
            strangers = [r for r in main_rows if not r[1].startswith("switchboard.gateway.")]
            if strangers:
                raise CheckFailed(f"non-gateway bindings on the main exchange {exchange!r}: {strangers}")
            wanted_rows = {(exchange, "switchboard.gateway.gw-1", "broadcast"),
                           (exchange, "switchboard.gateway.gw-2", "broadcast"),
                           (exchange, "switchboard.gateway.gw-1", "user.alice"),
                           (exchange, "switchboard.gateway.gw-1", "room.lobby"),
                           (exchange, "switchboard.gateway.gw-2", "user.bob"),
                           (exchange, "switchboard.gateway.gw-2", "user.~Ym9iLnNtaXRo")}
            if not wanted_rows <= set(main_rows):
                raise CheckFailed(f"bindings on {exchange!r} lack {sorted(wanted_rows - set(main_rows))}; have {main_rows}")
            event_rows = {r for r in rows if r[0] == events}
            wanted_events = {(events, worker.queue, k) for k in ("user.*", "room.*", "undelivered.user.*")}
            if event_rows != wanted_events:
                raise CheckFailed(f"bindings on {events!r}: {sorted(event_rows)}, wanted {sorted(wanted_events)}")
            done.append(f"main exchange bound to gateway queues only ({len(main_rows)} bindings)")
        else:
            done.append("bindings not listed (SWITCHBOARD_RABBITMQ_DIR unset)")

        # 6b. The broker keeps workers from forging frames (deploy/rabbitmq/users.sh).
        if users is not None:
            await check_restricted_worker(alice, bob, exchange, events, users, done)
            await worker.call(worker.take, "user.bob")  # the two events the admin worker got too
            await worker.call(worker.take, "user.bob")
        else:
            done.append("broker users not checked (SWITCHBOARD_RABBITMQ_DIR unset)")

        # 7. The publish API.
        key1, key2 = api_keys
        api1 = f"http://127.0.0.1:{gw1.port}/v1/publish"
        api2 = f"http://127.0.0.1:{gw2.port}/v1/publish"
        auth1 = {"Authorization": f"Bearer {key1}"}

        async def post(url, body, headers):
            return await asyncio.get_running_loop().run_in_executor(None, http_post, url, body, headers)

        async def expect_post(url, body, headers, status, answer, what):
            """`answer`: the exact JSON wanted, or an error code (then any message is fine)."""
            got_status, got_answer = await post(url, body, headers)
            if isinstance(answer, str):
                ok = (isinstance(got_answer, dict) and got_answer.get("error") == answer
                      and isinstance(got_answer.get("message"), str))
                wanted = f'{{"error":"{answer}","message":…}}'
            else:
                ok, wanted = got_answer == answer, json.dumps(answer)
            if got_status != status or not ok:
                raise CheckFailed(f"POST /v1/publish ({what}): got {got_status} {got_answer!r}, wanted {status} {wanted}")
            return got_answer

        api_data = '{"k": [1.0, "\\u00e9"], "t": "x y"}'
        await expect_post(api1, ('{"user":"bob","data":' + api_data + '}').encode(), auth1, 202,
                          {"outcome": "routed", "address": "user.bob"}, "user bob")
        await bob.expect(direct_frame("server", "bob", api_data), "the API's direct frame")
        # The second key of gw-1's comma-separated list; an explicit `from`; an encoded id.
        await expect_post(api1, b'{"user":"bob.smith","from":"ops.bot","data":2}', {"Authorization": f"Bearer {key2}"},
                          202, {"outcome": "routed", "address": "user.~Ym9iLnNtaXRo"}, "user bob.smith, key 2")
        await smith.expect(direct_frame("ops.bot", "bob.smith", "2"), "the API's direct frame")
        # gw-2 got its key from SWITCHBOARD_API_KEY; alice (on gw-1) is in lobby.
        await expect_post(api2, b'{"room":"lobby","data":{"a":1}}', {"Authorization": f"Bearer {key1}"}, 202,
                          {"outcome": "routed", "address": "room.lobby"}, "room lobby via gw-2")
        await alice.expect(room_frame("lobby", "server", '{"a":1}'), "the API's room frame")
        await expect_post(api1, b'{"user":"carol","data":1}', auth1, 202,
                          {"outcome": "recipient_offline", "address": "user.carol"}, "offline carol")
        await expect_post(api1, b'{"broadcast":true,"from":"ops","data":"all hands"}', auth1, 202,
                          {"outcome": "routed", "address": "broadcast"}, "broadcast")
        for client in clients:
            await client.expect(broadcast_frame("ops", '"all hands"'), "the API's broadcast frame")
        done.append("API 202 routed (user, room, broadcast) / recipient_offline, frames byte for byte")

        for headers, what in (({}, "no Authorization"), ({"Authorization": "Bearer wrong-key"}, "wrong key"),
                              ({"Authorization": key1}, "key without Bearer")):
            await expect_post(api1, b'{"user":"bob","data":1}', headers, 401, "unauthorized", what)
        bad_bodies = {
            "invalid JSON": b'{"user":"bob","data":',
            "trailing bytes": b'{"user":"bob","data":1} x',
            "empty body": b'',
            "not an object": b'[1]',
            "no target": b'{"data":1}',
            "two targets": b'{"user":"bob","room":"lobby","data":1}',
            "user and broadcast": b'{"user":"bob","broadcast":true,"data":1}',
            "broadcast false": b'{"broadcast":false,"data":1}',
            "missing data": b'{"user":"bob"}',
            "empty user id": b'{"user":"","data":1}',
            "control character in room id": b'{"room":"a\\u0001b","data":1}',
            "user id of 129 bytes": ('{"user":"' + "u" * 129 + '","data":1}').encode(),
            "invalid from": b'{"user":"bob","from":"","data":1}',
            "user not a string": b'{"user":5,"data":1}',
        }
        for what, body in bad_bodies.items():
            await expect_post(api1, body, auth1, 400, "bad_request", what)
        done.append(f"API 401 ×3, 400 ×{len(bad_bodies)}")
        big = ('{"user":"bob","data":"' + "x" * 70_000 + '"}').encode()
        try:
            await expect_post(api1, big, auth1, 413, "content_too_large", "70 kB body")
        except (ConnectionError, urllib.error.URLError) as e:
            raise CheckFailed(f"POST /v1/publish (70 kB body): the connection failed ({e!r}) instead of a 413 answer")
        done.append("API 413")

        # 8. API publishes (and the worker's own frames) are not events: after a sentinel
        # client message from each gateway, the worker must have seen nothing but the two
        # sentinels (one gateway's events keep their order).
        await alice.send('{"type":"direct","to":"bob","data":"sentinel 1","id":"s1"}')
        await bob.send('{"type":"direct","to":"alice","data":"sentinel 2","id":"s2"}')
        await bob.expect(direct_frame("alice", "bob", '"sentinel 1"'), "sentinel 1")
        await alice.expect(direct_frame("bob", "alice", '"sentinel 2"'), "sentinel 2")
        await alice.ack("s1")
        await bob.ack("s2")
        sentinels = {"user.bob": direct_frame("alice", "bob", '"sentinel 1"').encode(),
                     "user.alice": direct_frame("bob", "alice", '"sentinel 2"').encode()}
        seen = []
        for key in sentinels:
            seen.append(await worker.call(worker.take, key))
        seen += await worker.call(worker.drain)
        if [(k, b) for k, b, _ in seen] != list(sentinels.items()):
            raise CheckFailed("worker: API publishes or worker frames showed up on the events exchange: "
                              f"{[(k, b) for k, b, _ in seen]}, wanted only the sentinels")
        done.append("API publishes not on the events exchange")

        # 9. Events are confirmed by the broker and counted: gw-1 published 6 (d1, p1, d2 and
        # its undelivered copy, d3, s1) and r1, r2 when the users were checked, gw-2 one (s2);
        # none failed.
        for gw, wanted in ((gw1, 6 + (2 if users is not None else 0)), (gw2, 1)):
            counts = await asyncio.get_running_loop().run_in_executor(None, wait_event_counts, gw, wanted)
            if counts != (wanted, 0):
                raise CheckFailed(f"{gw.id} /metrics: switchboard_events_published_total, "
                                  f"switchboard_events_publish_failures_total = {counts}, wanted ({wanted}, 0)")
        done.append(f"events counted in /metrics ({6 + (2 if users is not None else 0)} + 1 confirmed, 0 failed)")

        for client in clients:
            if client.inbox:
                raise CheckFailed(f"{client.name}: unexpected frames {client.inbox}")
    finally:
        for client in clients:
            await client.close()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


def wait_event_counts(gw, wanted):
    """(published, failed) events from the gateway's /metrics, once published reaches `wanted` or after WAIT."""
    deadline = time.time() + WAIT
    while True:
        status, body = http_get(f"http://127.0.0.1:{gw.port}/metrics")
        text = body.decode("utf-8", "replace") if status == 200 else ""
        counts = (metric(text, "switchboard_events_published_total"), metric(text, "switchboard_events_publish_failures_total"))
        if counts[0] == wanted or time.time() > deadline:
            return counts
        time.sleep(0.1)


def delete_broker_objects(amqp_url, queues, exchanges):
    """Deletes the workers' queues and this run's exchanges; each on a channel of its own."""
    problems = []
    try:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except Exception as e:
        return [f"cannot connect to delete {queues} and {exchanges}: {e!r}"]
    try:
        for kind, name in [("queue", q) for q in queues] + [("exchange", e) for e in exchanges]:
            channel = connection.channel()
            try:
                if kind == "queue":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
            except Exception as e:
                problems.append(f"deleting {kind} {name}: {e!r}")
            finally:
                if channel.is_open:
                    channel.close()
    finally:
        connection.close()
    return problems


def check_api_off_and_draining(binary, work):
    """Without --api-key the route does not exist (404); a draining gateway answers 503.

    Both on the in-memory backplane: neither needs the broker."""
    env = {k: v for k, v in os.environ.items() if k != "SWITCHBOARD_API_KEY"}
    body, key = b'{"user":"bob","data":1}', secrets.token_urlsafe(24)
    gw = Gateway(binary, "gw-noapi", free_port(), work, ["--web-root", "off"], env)
    try:
        gw.start()
        gw.wait_ready(START_WAIT)
        status, answer = http_post(f"http://127.0.0.1:{gw.port}/v1/publish", body, {"Authorization": f"Bearer {key}"})
        if status != 404:
            raise CheckFailed(f"POST /v1/publish on a gateway without --api-key: {status} {answer!r}, wanted 404")
    finally:
        gw.stop()
    gw = Gateway(binary, "gw-drain", free_port(), work, ["--web-root", "off", "--api-key", key], env)
    gw.args[gw.args.index("--drain-grace") + 1] = "30"  # /readyz says 503 for 30 s after SIGTERM
    try:
        gw.start()
        gw.wait_ready(START_WAIT)
        url = f"http://127.0.0.1:{gw.port}/v1/publish"
        status, answer = http_post(url, body, {"Authorization": f"Bearer {key}"})
        if status != 202:
            raise CheckFailed(f"POST /v1/publish before the drain: {status} {answer!r}, wanted 202")
        gw.process.terminate()
        deadline = time.time() + WAIT
        while http_get(f"http://127.0.0.1:{gw.port}/readyz")[0] != 503:
            if time.time() > deadline:
                raise CheckFailed("/readyz did not turn 503 after SIGTERM")
            time.sleep(0.05)
        status, answer = http_post(url, body, {"Authorization": f"Bearer {key}"})
        if status != 503 or not isinstance(answer, dict) or answer.get("error") != "service_unavailable":
            raise CheckFailed(f"POST /v1/publish while draining: {status} {answer!r}, wanted 503 service_unavailable")
    finally:
        if gw.process is not None and gw.process.poll() is None:
            gw.process.kill()  # the drain grace would keep it 30 s
            gw.process.wait(timeout=5)


def main(binary):
    amqp_url = os.environ.get("SWITCHBOARD_AMQP_URL")
    if not amqp_url:
        sys.exit("workers_check: SWITCHBOARD_AMQP_URL is not set; start a broker with "
                 "`eval \"$(scripts/rabbitmq.sh start DIR)\"` (the events exchange lives on RabbitMQ)")
    rabbitmq_dir = os.environ.get("SWITCHBOARD_RABBITMQ_DIR")
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    missing = [option for option in ("--events-exchange", "--api-key") if option not in help_text]
    if missing:
        sys.exit(f"workers_check: {binary} has no {' or '.join(missing)} (serve --help); build a newer switchboard")

    run = secrets.token_hex(4)
    exchange, events = f"sbw.{run}", f"sbw.{run}.events"
    queue = f"sbw.{run}.worker"
    api_keys = (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    work = tempfile.mkdtemp(prefix="switchboard-workers-")
    users = BrokerUsers(amqp_url, rabbitmq_dir, run, exchange, events) if rabbitmq_dir else None
    gateway_url = users.gateway_url if users else amqp_url
    common = ["--web-root", "off", "--backplane", gateway_url, "--exchange", exchange, "--events-exchange", events]
    env1 = {k: v for k, v in os.environ.items() if k != "SWITCHBOARD_API_KEY"}
    env2 = dict(env1, SWITCHBOARD_API_KEY=api_keys[0])  # gw-2 takes its key from the environment
    gw1 = Gateway(binary, "gw-1", free_port(), work, common + ["--api-key", ",".join(api_keys)], env1)
    gw2 = Gateway(binary, "gw-2", free_port(), work, common, env2)
    worker = Worker(amqp_url, exchange, events, queue)
    done = []
    failed = None
    problems = []
    try:
        if users:
            permissions = users.create()
            wanted = {users.gateway_user, users.worker_user}
            if set(permissions) != wanted:
                raise CheckFailed(f"deploy/rabbitmq/users.sh: permissions for {sorted(permissions)}, wanted {sorted(wanted)}")
            _, write, read = permissions[users.worker_user]
            for regex, name, what in ((write, exchange, "write to the main"), (write, events, "write to the events"),
                                      (read, exchange, "read (bind to) the main")):
                if re.search(regex, name):
                    raise CheckFailed(f"the worker user may {what} exchange: permissions {permissions[users.worker_user]}")
            done.append("deploy/rabbitmq/users.sh: gateway and worker users; the gateways log in as the gateway user")
        gw1.start()
        gw2.start()
        gw1.wait_ready(START_WAIT)
        gw2.wait_ready(START_WAIT)
        asyncio.run(asyncio.wait_for(scenario(gw1, gw2, worker, api_keys, rabbitmq_dir, users, done), 240))
        check_api_off_and_draining(binary, work)
        done.append("API off → 404; draining → 503")
    except (CheckFailed, asyncio.TimeoutError, pika.exceptions.AMQPError) as e:
        failed = f"{type(e).__name__}: {e}" if not isinstance(e, CheckFailed) else str(e)
        failed = failed or "timed out"
    finally:
        try:
            worker.pool.submit(worker.close).result(timeout=10)
        except Exception:
            pass
        worker.pool.shutdown(wait=False)
        gw1.stop()
        gw2.stop()
        queues = [queue] + ([users.worker_queues + "restricted"] if users else [])
        problems = delete_broker_objects(amqp_url, queues, [events, exchange])
        if users:
            problems += users.delete()
        if failed:
            for gw in (gw1, gw2):
                tail = gw.log_tail()
                if tail:
                    print(f"--- {gw.id} log tail ---\n{tail}", file=sys.stderr)
            print("passed before the failure: " + ("; ".join(done) or "nothing"), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(f"workers_check: FAIL: {failed}")
    if problems:
        sys.exit(f"workers_check: FAIL: clean-up: {'; '.join(problems)}")
    print(f"workers and publish API on RabbitMQ: PASS ({len(done)} checks: {'; '.join(done)})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: workers_check.py PATH/TO/switchboard")
    main(sys.argv[1])
