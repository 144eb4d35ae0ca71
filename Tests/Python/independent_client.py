"""An independent WebSocket client (the Python `websockets` library) against a real gateway.

Run by scripts/test.sh in a throwaway virtualenv. Starts `switchboard serve` on a free
loopback port, then checks the handshake, the welcome, a direct message, a room
message, ping/pong, a 401, and a clean close; exits non-zero on any failure.
"""
import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import websockets

from harness import free_port


async def check(port):
    base = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(f"{base}?user=alice") as alice, websockets.connect(f"{base}?user=bob") as bob:
        assert json.loads(await alice.recv()) == {"type": "welcome", "user": "alice", "gateway": "py"}
        assert json.loads(await bob.recv())["user"] == "bob"
        await alice.send(json.dumps({"type": "direct", "to": "bob", "data": {"n": 1}, "id": "d1"}))
        assert json.loads(await bob.recv()) == {"type": "direct", "from": "alice", "to": "bob", "data": {"n": 1}}
        assert json.loads(await alice.recv()) == {"type": "ack", "id": "d1"}
        for client in (alice, bob):
            await client.send(json.dumps({"type": "join", "room": "lobby", "id": "j"}))
            assert json.loads(await client.recv())["type"] == "ack"
        await bob.send(json.dumps({"type": "publish", "room": "lobby", "data": "hi"}))
        assert json.loads(await alice.recv()) == {"type": "room", "room": "lobby", "from": "bob", "data": "hi"}
        pong = await alice.ping(b"abc")
        await asyncio.wait_for(pong, 5)
        await alice.send("not json")
        assert json.loads(await alice.recv())["code"] == "invalid_message"
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
