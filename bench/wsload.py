#!/usr/bin/env python3
"""wsload.py: an independent load generator for Switchboard gateways (picows on uvloop).

It offers the same `direct` and `room` traffic as `switchboard-bench direct|room`
(Sources/switchboard-bench/LoadScenarios.swift, LoadBench.swift) and prints the same
figures, as text and, with --json, as one JSON line with the keys of LoadResult plus
"generator":"wsload.py". It shares no code with the gateway (the Swift generator is built
on the gateway's own WebSocket and NIO stack), so its figures can cross-check that tool's.

The gateways must run with `--auth none` (users connect as `?user=u<i>`) and a rate limit
that does not get in the way (bench/run.sh: --rate-limit 1000000 --rate-burst 1000000).
Only loopback gateways (127.0.0.0/8, ::1, localhost) are accepted.

What is measured, as in the Swift tool: user i connects to gateway i % G and counts once
its `welcome` arrived (256 handshakes at a time, 120 s at most); in `room` user i joins
room r<i // members> and every join is acked first (60 s at most). Then messages are sent
paced every millisecond up to rate x elapsed, each carrying {"s":SEQ,"t":MICROS}; after
the sending, deliveries are awaited for at most 5 s. CPU time (utime+stime from /proc) of
the gateways, the brokers and this process over the sending and draining is divided by
the messages delivered; the gateways' switchboard_backplane_received_messages_total
(GET /metrics) before and after gives the amplification. Latency percentiles come from a
log-linear histogram with the bucket layout of an HdrHistogram of 3 significant digits in
microseconds (what the Swift tool uses), reported in ms as highest equivalent values.

Install:
    python3 -m venv V && V/bin/pip install picows uvloop
(picows' optional aiofastnet transport is switched off, so every install measures the same
uvloop transport.)

Example:
    V/bin/python bench/wsload.py direct --gateway ws://127.0.0.1:18300/ws \\
        --gateway ws://127.0.0.1:18301/ws --gateway-pid 1234 --gateway-pid 1235 \\
        --broker-pid 999 --users 2000 --rate 5000 --duration 15 --label rabbitmq --json
    V/bin/python bench/wsload.py room --gateway ws://127.0.0.1:18300/ws --gateway-pid 1234 \\
        --users 2000 --rooms 200 --members-per-room 10 --rate 1000 --duration 10
"""

import argparse
import array
import asyncio
import collections
import gc
import ipaddress
import json
import os
import random
import resource
import socket
import sys
import time
import urllib.request
from urllib.parse import urlsplit

try:
    import uvloop
    from picows import WSListener, WSMsgType, WSCloseCode, ws_connect
except ImportError as error:  # pragma: no cover - a setup problem, said plainly
    sys.exit(f"wsload.py needs picows and uvloop ({error}); python3 -m venv V && V/bin/pip install picows uvloop")

CONNECT_SECONDS = 120.0
SETUP_SECONDS = 60.0
DRAIN_SECONDS = 5.0
CLOSE_SECONDS = 3.0
METRICS_SERIES = "switchboard_backplane_received_messages_total"

# Histogram: values below 2048 us exactly, above that 1024 sub-buckets per power of two
# (an HdrHistogram with 3 significant digits). 20480 buckets reach 2^28 us (268 s);
# anything longer lands in the last bucket.
SUB_BITS = 10
SUB_HALF = 1 << SUB_BITS  # 1024
SUB_COUNT = SUB_HALF << 1  # 2048
HIST_SIZE = 20 * SUB_HALF


def fail(message):
    print(f"wsload.py: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- options


def loopback(host, port):
    """True when host names only loopback addresses (localhost is resolved and checked)."""
    if host == "localhost":
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Endpoint:
    __slots__ = ("netloc", "host", "port", "path")

    def __init__(self, text):
        try:
            url = urlsplit(text)
            port = url.port
        except ValueError:
            fail(f"--gateway must look like ws://127.0.0.1:8080/ws, not {text}")
        if url.scheme != "ws" or not url.hostname or port is None or url.query or url.fragment or url.username:
            fail(f"--gateway must look like ws://127.0.0.1:8080/ws, not {text}")
        if not loopback(url.hostname, port):
            fail(f"wsload.py only targets loopback addresses, not {url.hostname}")
        self.netloc = url.netloc
        self.host = url.hostname
        self.port = port
        self.path = url.path or "/ws"

    def ws_url(self, user, nchan=False):
        if nchan:
            return f"ws://{self.netloc}/sub/{user}"
        return f"ws://{self.netloc}{self.path}?user={user}"

    def metrics_url(self):
        return f"http://{self.netloc}/metrics"


def parse_arguments(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--gateway", action="append", default=[], metavar="URL",
                        help="gateway WebSocket URL ws://127.0.0.1:PORT/ws (repeat; user i goes to gateway i %% G)")
    common.add_argument("--gateway-pid", action="append", type=int, default=[], metavar="PID",
                        help="gateway process id, for CPU time from /proc (repeat)")
    common.add_argument("--broker-pid", action="append", type=int, default=[], metavar="PID",
                        help="broker process id (beam.smp, redis-server), for CPU time (repeat)")
    common.add_argument("--users", type=int, default=2000, help="connections, one user each (2..19000)")
    common.add_argument("--rate", type=int, default=1000, help="messages per second offered, in total (1..50000)")
    common.add_argument("--duration", type=int, default=10, help="seconds of sending (1..120)")
    common.add_argument("--connect-concurrency", type=int, default=256, help="handshakes in flight (1..256)")
    common.add_argument("--label", default="", help="copied into the JSON result")
    common.add_argument("--target", choices=("switchboard", "nchan"), default="switchboard",
                        help="nchan: the reference server (bench/nchan.sh); users subscribe on ws://HOST:PORT/sub/u<i>, "
                             "a direct message is an HTTP POST to /pub/u<recipient> on the sender's server (direct only)")
    common.add_argument("--json", action="store_true", help="also print one JSON line with every figure")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="scenario", required=True)
    commands.add_parser("direct", parents=[common], help="direct messages, each to a user on another gateway")
    room = commands.add_parser("room", parents=[common], help="room messages from random members")
    room.add_argument("--rooms", type=int, default=100, help="rooms")
    room.add_argument("--members-per-room", type=int, default=10, help="members per room (users = rooms x members)")
    args = parser.parse_args(argv)

    if not args.gateway:
        fail("name at least one --gateway")
    args.endpoints = [Endpoint(text) for text in args.gateway]
    if not 2 <= args.users <= 19000:
        fail("--users must be 2..19000")
    if not 1 <= args.rate <= 50000:
        fail("--rate must be 1..50000")
    if not 1 <= args.duration <= 120:
        fail("--duration must be 1..120")
    if not 1 <= args.connect_concurrency <= 256:
        fail("--connect-concurrency must be 1..256")
    if args.scenario == "room":
        if args.rooms < 1 or args.members_per_room < 1 or args.rooms * args.members_per_room != args.users:
            fail("--users must equal --rooms x --members-per-room")
    for pid in args.gateway_pid + args.broker_pid:
        if pid <= 0:
            fail(f"not a process id: {pid}")
        try:
            cpu_micros(pid)
        except (OSError, ValueError):
            fail(f"cannot read /proc/{pid}/stat")
    return args


def raise_open_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        fail(f"the open-file limit is {soft}; {needed} are needed (raise ulimit -n)")


# ---------------------------------------------------------------- measurements

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_micros(pid):
    """utime + stime of a process, in microseconds (fields counted after the last ')')."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        text = stat.read()
    fields = text[text.rindex(b")") + 1:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS * 1_000_000


def cpu_sum(pids, gone):
    """Summed CPU time of pids; a pid that cannot be read (the process exited) goes into gone."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_micros(pid)
        except (OSError, ValueError, IndexError):
            gone.add(pid)
    return total


class NchanPublisher(asyncio.Protocol):
    """Publishes to nchan over one keep-alive HTTP/1.1 connection (requests pipelined) and
    reads the answers, counting them."""

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.responses = 0

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, error):
        if self.buffer:
            print("nchan closed the publisher connection after:", bytes(self.buffer[:300]))

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            start = head.find(b"content-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15:stop if stop > 0 else len(head)])
            if len(buffer) < end + 4 + length:
                return
            del buffer[:end + 4 + length]
            self.responses += 1

    def post(self, recipient, body):
        self.transport.write(b"POST /pub/u%d HTTP/1.1\r\nHost: nchan\r\nContent-Length: %d\r\n\r\n%s" % (recipient, len(body), body))


def gateway_counter(endpoints, series=METRICS_SERIES):
    """Sum of the plain series line over the gateways' /metrics (unreachable ones count 0)."""
    total = 0
    prefix = series + " "
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(endpoint.metrics_url(), timeout=5) as response:
                body = response.read(16 * 1024 * 1024).decode("utf-8", "replace")
        except (OSError, ValueError):
            continue
        for line in body.split("\n"):
            if line.startswith(prefix):
                try:
                    total += int(float(line[len(prefix):].split()[0]))
                except (ValueError, IndexError):
                    pass
    return total


def highest_equivalent(index):
    if index < SUB_COUNT:
        return index
    shift = (index >> SUB_BITS) - 1
    sub = index - (shift << SUB_BITS)
    return ((sub + 1) << shift) - 1


def latency_ms(histogram):
    total = sum(histogram)
    result = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    if total == 0:
        return result
    targets = [(key, max(1, int(p / 100 * total + 0.5))) for key, p in (("p50", 50), ("p90", 90), ("p99", 99))]
    seen = 0
    top = 0
    for index, count in enumerate(histogram):
        if not count:
            continue
        seen += count
        top = index
        while targets and seen >= targets[0][1]:
            result[targets.pop(0)[0]] = highest_equivalent(index) / 1000
    result["max"] = highest_equivalent(top) / 1000
    return result


# ---------------------------------------------------------------- the run


async def run(args):
    endpoints = args.endpoints
    gateways = len(endpoints)
    users = args.users
    rate = args.rate
    duration = args.duration
    members = args.members_per_room if args.scenario == "room" else 1
    capacity = rate * duration
    loop = asyncio.get_running_loop()

    # Ledger, shared with the listeners through the closure (cell reads are the cheapest).
    counts = array.array("I", bytes(4 * capacity))
    histogram = array.array("Q", bytes(8 * HIST_SIZE))
    origin_us = time.monotonic_ns() // 1000
    monotonic_ns = time.monotonic_ns
    arrived = 0
    acks = 0
    errors = collections.Counter()
    dropped = 0
    TEXT = WSMsgType.TEXT
    CLOSE = WSMsgType.CLOSE
    nchan = args.target == "nchan"
    if nchan and args.scenario != "direct":
        fail("--target nchan runs direct only")
    # nchan delivers the published body as it is: the bare {"s":…,"t":…}.
    DELIVERY = (b'{"s":',) if nchan else (b'{"type":"direct"', b'{"type":"room"')
    ACK = b'{"type":"ack"'
    WELCOME = b'{"type":"welcome"'
    last = HIST_SIZE - 1

    class Client(WSListener):
        __slots__ = ("welcome", "welcomed", "transport")

        def __init__(self, welcome):
            super().__init__()
            self.welcome = welcome
            self.welcomed = False
            self.transport = None

        def on_ws_connected(self, transport):
            self.transport = transport
            if nchan:
                # nchan sends no welcome: the subscription is in place once the upgrade is done.
                self.welcomed = True
                if not self.welcome.done():
                    self.welcome.set_result(True)

        def on_ws_frame(self, transport, frame):
            nonlocal arrived, acks
            data = frame.get_payload_as_bytes()
            if data.startswith(DELIVERY):
                i = data.find(b'{"s":')
                if i < 0:
                    return
                i += 5
                j = data.find(b',"t":', i)
                k = data.find(b"}", j)
                try:
                    sequence = int(data[i:j])
                    stamp = int(data[j + 5:k])
                except ValueError:
                    return
                if 0 <= sequence < capacity:
                    counts[sequence] += 1
                    arrived += 1
                    micros = monotonic_ns() // 1000 - origin_us - stamp
                    if micros < SUB_COUNT:
                        histogram[micros if micros > 0 else 0] += 1
                    else:
                        shift = micros.bit_length() - SUB_BITS - 1
                        index = (shift << SUB_BITS) + (micros >> shift)
                        histogram[index if index < last else last] += 1
                return
            if data.startswith(ACK):
                acks += 1
                return
            self.other(transport, frame, data)

        def other(self, transport, frame, data):
            kind = frame.msg_type
            if kind == CLOSE:
                # The gateway closes first (drain, limits): answer with its code, then go.
                if not transport.is_close_frame_sent:
                    code = frame.get_close_code()
                    transport.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
                transport.disconnect()
                return
            if kind != TEXT:
                return
            if not self.welcomed:
                if data.startswith(WELCOME):
                    self.welcomed = True
                    if not self.welcome.done():
                        self.welcome.set_result(True)
                else:
                    if not self.welcome.done():
                        self.welcome.set_result(False)
                    transport.disconnect(False)
                return
            if data.startswith(b'{"type":"error"'):
                start = data.find(b'"code":"')
                end = data.find(b'"', start + 8) if start >= 0 else -1
                errors[data[start + 8:end].decode("utf-8", "replace") if end > 0 else "?"] += 1

        def on_ws_disconnected(self, transport):
            nonlocal dropped
            if not self.welcome.done():
                self.welcome.set_result(False)
            elif self.welcomed and not closing:
                dropped += 1

    # ---- connect: 256 handshakes at a time, a connection counts once its welcome arrived
    closing = False
    transports = [None] * users
    refusals = collections.Counter()
    connect_started = time.monotonic()
    connect_deadline = connect_started + CONNECT_SECONDS
    next_user = 0

    async def connect_one(index):
        remaining = connect_deadline - time.monotonic()
        if remaining <= 0:
            return
        welcome = loop.create_future()
        listener = Client(welcome)
        url = endpoints[index % gateways].ws_url(f"u{index}", nchan)
        transport = None
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(lambda: listener, url, websocket_handshake_timeout=min(remaining, 30.0),
                           enable_auto_ping=False, enable_auto_pong=True, max_frame_size=1 << 20,
                           max_redirects=0, use_aiofastnet=False),
                remaining)
            remaining = connect_deadline - time.monotonic()
            if remaining > 0 and await asyncio.wait_for(asyncio.shield(welcome), remaining):
                transports[index] = transport
                return
            refusals["no welcome"] += 1
        except asyncio.TimeoutError:
            refusals["timeout"] += 1
        except Exception as error:  # refused handshakes (429, 503), resets
            status = getattr(getattr(error, "response", None), "status", None)
            refusals[f"HTTP {status}" if status else type(error).__name__] += 1
        if transport is not None:
            transport.disconnect(False)

    async def connector():
        nonlocal next_user
        while next_user < users and time.monotonic() < connect_deadline:
            index = next_user
            next_user += 1
            await connect_one(index)

    await asyncio.gather(*(connector() for _ in range(min(args.connect_concurrency, users))))
    connected = sum(1 for transport in transports if transport is not None)

    result = {"scenario": args.scenario, "label": args.label, "gateways": gateways, "users": users,
              "connected": connected}
    try:
        if connected != users:
            detail = ", ".join(f"{reason}: {count}" for reason, count in refusals.most_common())
            print(f"only {connected} of {users} connections opened; not sending ({detail or 'deadline'})")
            return result, errors, 0

        # ---- set-up: joins, then wait until each is acknowledged
        setup_frames = 0
        if args.scenario == "room":
            for index, transport in enumerate(transports):
                transport.send(TEXT, b'{"type":"join","room":"r%d"}' % (index // members))
                setup_frames += 1
        setup_deadline = time.monotonic() + SETUP_SECONDS
        while acks < setup_frames and time.monotonic() < setup_deadline:
            await asyncio.sleep(0.02)
        if acks < setup_frames:
            print(f"only {acks} of {setup_frames} joins acknowledged within {SETUP_SECONDS:.0f} s; sending anyway")

        # nchan: one keep-alive HTTP connection per server, requests pipelined on it.
        publishers = []
        if nchan:
            for endpoint in endpoints:
                _, publisher = await loop.create_connection(NchanPublisher, endpoint.host, endpoint.port)
                publishers.append(publisher)
            # Subscriptions reach Redis shortly after the upgrade.
            await asyncio.sleep(2)

        gc.collect()
        gc.freeze()
        gc.disable()

        received_before = gateway_counter(endpoints)
        gone = set()
        gateway_cpu_before = cpu_sum(args.gateway_pid, gone)
        broker_cpu_before = cpu_sum(args.broker_pid, gone)
        generator_cpu_before = cpu_micros(os.getpid())

        # ---- paced sending: each millisecond, catch up to rate x elapsed
        rnd = random.random
        rooms = args.rooms if args.scenario == "room" else 0
        started = monotonic_ns()
        end = started + duration * 1_000_000_000
        tick = started
        sent = 0
        now = started
        while now < end and sent < capacity:
            tick += 1_000_000
            delay = tick - monotonic_ns()
            await asyncio.sleep(delay / 1e9 if delay > 0 else 0)
            now = monotonic_ns()
            due = min(capacity, (now - started) * rate // 1_000_000_000)
            if rooms:
                while sent < due:
                    room = int(rnd() * rooms)
                    sender = room * members + int(rnd() * members)
                    frame = b'{"type":"publish","room":"r%d","data":{"s":%d,"t":%d}}' % (
                        room, sent, monotonic_ns() // 1000 - origin_us)
                    try:
                        transports[sender].send(TEXT, frame)
                    except Exception:
                        pass
                    sent += 1
            else:
                while sent < due:
                    # The next user is on the next gateway (users are spread round-robin).
                    sender = int(rnd() * users)
                    if gateways > 1 and sender % gateways == ((sender + 1) % users) % gateways:
                        sender = (sender + 1) % users
                    recipient = (sender + 1) % users
                    if nchan:
                        publishers[sender % gateways].post(recipient, b'{"s":%d,"t":%d}' % (sent, monotonic_ns() // 1000 - origin_us))
                        sent += 1
                        continue
                    frame = b'{"type":"direct","to":"u%d","data":{"s":%d,"t":%d}}' % (
                        recipient, sent, monotonic_ns() // 1000 - origin_us)
                    try:
                        transports[sender].send(TEXT, frame)
                    except Exception:
                        pass
                    sent += 1
        send_seconds = (monotonic_ns() - started) / 1e9
        expected = sent * members
        drain_deadline = time.monotonic() + DRAIN_SECONDS
        while arrived < expected and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.01)

        gateway_cpu = cpu_sum(args.gateway_pid, gone) - gateway_cpu_before
        broker_cpu = cpu_sum(args.broker_pid, gone) - broker_cpu_before
        generator_cpu = cpu_micros(os.getpid()) - generator_cpu_before
        received_after = gateway_counter(endpoints)

        tally = collections.Counter(counts[:sent])
        delivered = sum(min(count, members) * times for count, times in tally.items())
        lost = sum(max(0, members - count) * times for count, times in tally.items())
        duplicated = sum(max(0, count - members) * times for count, times in tally.items())
        result.update({
            "rate": rate, "duration_s": send_seconds, "sent": sent, "expected": expected,
            "delivered": delivered, "lost": lost, "duplicated": duplicated,
            "achieved_rate": sent / max(send_seconds, 0.001), "latency_ms": latency_ms(histogram),
        })
        if gone:
            print("CPU not measured: /proc/PID/stat unreadable for " + ", ".join(map(str, sorted(gone))))
        elif delivered > 0 and args.gateway_pid:
            result["cpu_us_per_msg"] = {
                "gateways": gateway_cpu / delivered, "brokers": broker_cpu / delivered,
                "total": (gateway_cpu + broker_cpu) / delivered, "generator": generator_cpu / delivered,
            }
        result["backplane_received"] = received_after - received_before
        if sent > 0:
            result["amplification"] = (received_after - received_before) / sent
        return result, errors, dropped
    finally:
        gc.enable()
        closing = True
        await close_all(transports)


async def close_all(transports):
    """Close handshake on every connection; whatever has not finished after a few seconds is aborted."""
    open_ones = [t for t in transports if t is not None and not t.is_disconnected]
    for transport in open_ones:
        try:
            transport.send_close(WSCloseCode.OK)
        except Exception:
            pass
    deadline = time.monotonic() + CLOSE_SECONDS
    while time.monotonic() < deadline and any(not t.is_disconnected for t in open_ones):
        await asyncio.sleep(0.05)
    for transport in open_ones:
        if not transport.is_disconnected:
            transport.disconnect(False)
    await asyncio.sleep(0)


# ---------------------------------------------------------------- output


def report(result, errors, dropped, as_json):
    label = result["label"] or "-"
    lines = [f"{result['scenario']} [{label}] on {result['gateways']} gateway(s), "
             f"{result['connected']}/{result['users']} connected"]
    if "sent" in result:
        lines.append(f"sent {result['sent']} ({result['achieved_rate']:.0f}/s), delivered {result['delivered']} "
                     f"of {result['expected']}, lost {result['lost']}, duplicated {result['duplicated']}")
        latency = result["latency_ms"]
        lines.append(f"latency ms: p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}  "
                     f"p99 {latency['p99']:.3f}  max {latency['max']:.3f}")
    cpu = result.get("cpu_us_per_msg")
    if cpu:
        lines.append(f"CPU µs per delivered message: gateways {cpu['gateways']:.1f} + brokers {cpu['brokers']:.1f} "
                     f"= {cpu['total']:.1f} (the load generator itself: {cpu['generator']:.1f})")
    if "amplification" in result:
        lines.append(f"backplane: gateways received {result['backplane_received']} messages, "
                     f"{result['amplification']:.2f} per message sent")
    if errors:
        lines.append("error frames: " + ", ".join(f"{code} {count}" for code, count in errors.most_common()))
    if dropped:
        lines.append(f"connections closed during the run: {dropped}")
    print("\n".join(lines))
    if as_json:
        result = dict(result, generator="wsload.py")
        print(json.dumps(result, separators=(",", ":"), allow_nan=False, default=str))
    sys.stdout.flush()


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    raise_open_file_limit(args.users + 64)
    result, errors, dropped = uvloop.run(run(args))
    report(result, errors, dropped, args.json)


if __name__ == "__main__":
    main()
