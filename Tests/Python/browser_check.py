"""A browser-grade client: headless Chromium (Debian) opens a WebSocket to a real gateway.

Run by scripts/test.sh in the same throwaway virtualenv as independent_client.py. It
starts `switchboard serve`, starts Chromium with the DevTools protocol on loopback,
loads a page whose script connects, joins a room, publishes and closes, and reads the
page's log through the DevTools protocol. Both processes are stopped by PID.
"""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

from harness import free_port

PAGE = """<!doctype html><html><body><pre id="log">start</pre><script>
const log = (t) => { document.getElementById('log').textContent += '\\n' + t; };
const ws = new WebSocket('ws://127.0.0.1:%d/ws?user=chromium');
ws.onmessage = (e) => {
  log(e.data);
  const m = JSON.parse(e.data);
  if (m.type === 'welcome') ws.send(JSON.stringify({type: 'join', room: 'lobby', id: 'j'}));
  else if (m.type === 'ack' && m.id === 'j') ws.send(JSON.stringify({type: 'publish', room: 'lobby', data: 'from chromium', id: 'p'}));
  else if (m.type === 'room') ws.close(1000);
};
ws.onclose = (e) => log('CLOSED ' + e.code);
ws.onerror = () => log('ERROR');
</script></body></html>"""


def wait_http(url, seconds=20):
    deadline = time.time() + seconds
    while True:
        try:
            return urllib.request.urlopen(url, timeout=1).read()
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


async def drive(debug_port, page_url):
    targets = json.loads(wait_http(f"http://127.0.0.1:{debug_port}/json/list"))
    target = next(t for t in targets if t.get("type") == "page")
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as cdp:
        counter = 0

        async def call(method, params=None):
            nonlocal counter
            counter += 1
            await cdp.send(json.dumps({"id": counter, "method": method, "params": params or {}}))
            while True:
                reply = json.loads(await cdp.recv())
                if reply.get("id") == counter:
                    return reply

        await call("Page.navigate", {"url": page_url})
        deadline = time.time() + 20
        text = ""
        while time.time() < deadline:
            reply = await call("Runtime.evaluate", {"expression": "document.getElementById('log') && document.getElementById('log').textContent"})
            text = reply.get("result", {}).get("result", {}).get("value") or ""
            if "CLOSED" in text or "ERROR" in text:
                break
            await asyncio.sleep(0.2)
        return text


def main(binary):
    gateway_port = free_port()
    debug_port = free_port()
    work = tempfile.mkdtemp(prefix="switchboard-chromium-")
    page = os.path.join(work, "page.html")
    with open(page, "w") as f:
        f.write(PAGE % gateway_port)
    gateway = subprocess.Popen([binary, "serve", "--port", str(gateway_port), "--auth", "none", "--gateway-id", "browser",
                                "--drain-grace", "0", "--drain-window", "0", "--log-level", "error"])
    chromium = None
    try:
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz")
        chromium = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--remote-debugging-port={debug_port}", f"--user-data-dir={work}/profile", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = asyncio.run(drive(debug_port, "file://" + page))
        lines = text.split("\n")
        frames = [json.loads(line) for line in lines if line.startswith("{")]
        # The embedded default keeps history: positions and offsets come with the frames.
        welcome, ack, room = (frames + [{}, {}, {}])[:3]
        assert {k: welcome.get(k) for k in ("type", "user", "gateway")} == {"type": "welcome", "user": "chromium", "gateway": "browser"}, text
        assert welcome.get("position", {}).get("offset") == 0, text
        assert ack.get("type") == "ack" and ack.get("id") == "j" and "position" in ack, text
        assert {k: room.get(k) for k in ("type", "room", "from", "data", "offset")} == {
            "type": "room", "room": "lobby", "from": "chromium", "data": "from chromium", "offset": 1}, text
        assert room.get("epoch") == ack["position"]["epoch"], text
        assert "CLOSED 1000" in lines, text
        print("headless chromium: 1 passed, 0 failed")
    finally:
        if chromium is not None:
            chromium.terminate()
            chromium.wait(timeout=15)
        gateway.terminate()
        gateway.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
