"""An independent WebSocket client (the Python `websockets` library) against a real gateway.

Run by scripts/test.sh in a throwaway virtualenv. Starts `switchboard serve` on a free
loopback port (the embedded default: memory backplane, memory history), then checks the
handshake, the welcome and its position, a direct message and a room message with their
offsets, ping/pong, a clean close, a direct kept for a user who is away and recovered by
`resume`, and a 401; exits non-zero on any failure.
"""
import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import websockets

from harness import free_port


async def wait_for_connections(port, count, seconds=10):
    """Polls the gateway's `switchboard_connections` gauge until it reads `count` (bounded)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        values = [float(line.split()[1]) for line in text.splitlines() if line.startswith("switchboard_connections ")]
        if values == [count]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the gateway did not reach {count} connections within {seconds} s")


async def check(port):
    base = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(f"{base}?user=alice") as alice, websockets.connect(f"{base}?user=bob") as bob:
        welcome = json.loads(await alice.recv())
        assert welcome["type"] == "welcome" and welcome["user"] == "alice" and welcome["gateway"] == "py", welcome
        assert welcome["position"]["offset"] == 0, welcome
        bob_epoch = json.loads(await bob.recv())["position"]["epoch"]
        await alice.send(json.dumps({"type": "direct", "to": "bob", "data": {"n": 1}, "id": "d1"}))
        assert json.loads(await bob.recv()) == {"type": "direct", "from": "alice", "to": "bob", "data": {"n": 1}, "offset": 1, "epoch": bob_epoch}
        assert json.loads(await alice.recv()) == {"type": "ack", "id": "d1"}
        for client in (alice, bob):
            await client.send(json.dumps({"type": "join", "room": "lobby", "id": "j"}))
            ack = json.loads(await client.recv())
            assert ack["type"] == "ack" and "position" in ack, ack
        await bob.send(json.dumps({"type": "publish", "room": "lobby", "data": "hi"}))
        room = json.loads(await alice.recv())
        assert {k: room[k] for k in ("type", "room", "from", "data", "offset")} == {"type": "room", "room": "lobby", "from": "bob", "data": "hi", "offset": 1}, room
        pong = await alice.ping(b"abc")
        await asyncio.wait_for(pong, 5)
        await alice.send("not json")
        assert json.loads(await alice.recv())["code"] == "invalid_message"
        # Bob goes away; a direct to him is kept, and he gets it when he resumes.
        await bob.close(code=1000)
        await wait_for_connections(port, 1)  # until the gateway has let bob go
        await alice.send(json.dumps({"type": "direct", "to": "bob", "data": "while away", "id": "d2"}))
        kept = json.loads(await alice.recv())
        assert kept == {"type": "ack", "id": "d2", "offset": 2, "recipient_offline": True}, kept
        async with websockets.connect(f"{base}?user=bob") as back:
            assert json.loads(await back.recv())["position"] == {"epoch": bob_epoch, "offset": 2}
            await back.send(json.dumps({"type": "resume", "since": {"epoch": bob_epoch, "offset": 1}, "id": "r"}))
            assert json.loads(await back.recv())["data"] == "while away"
            resumed = json.loads(await back.recv())
            assert resumed == {"type": "ack", "id": "r", "recovered": True, "position": {"epoch": bob_epoch, "offset": 2}}, resumed
        await alice.close(code=1000)
        assert alice.close_code == 1000, alice.close_code
    try:
        async with websockets.connect(base):
            raise AssertionError("handshake without identity was accepted")
    except websockets.exceptions.InvalidStatus as error:
        assert error.response.status_code == 401, error.response.status_code


def main(binary):
    port = free_port()
    server = subprocess.Popen([binary, "serve", "--port", str(port), "--auth", "none", "--gateway-id", "py",
                               "--drain-grace", "0", "--drain-window", "0", "--log-level", "error"])
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        asyncio.run(check(port))
        print(f"python websockets {websockets.__version__}: 1 passed, 0 failed")
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main(sys.argv[1])
