"""The demo chat page in a real browser: two headless Chromium pages on two gateways chat.

    SWITCHBOARD_AMQP_URL=amqp://… python demo_check.py PATH/TO/switchboard

Starts two gateways (gw-1, gw-2) on one RabbitMQ backplane with --auth none, and
headless Chromium (Debian) with the DevTools protocol on loopback. Two pages, each in a
browser context of its own, load the demo page from their gateway's `/` and are driven
through the UI like a person would: alice on gw-1 and bob on gw-2 type their names,
connect, join "lobby"; alice sends bob a direct message, bob sends lobby a room message.
Then gw-2 is stopped and started again on the same port: bob's page must reconnect,
re-join lobby and get alice's next room message. With SWITCHBOARD_REDIS_URL set the gateways
share a Redis history (--history): alice's direct and room messages sent while gw-2 is down
must appear on bob's page after the reconnect, with the page's "recovered" line; and a
Redis presence (--presence): each page lists both users in lobby, alice's live from bob's
`joined` event, and bob's reconnect within the grace shows no `left` on alice's page. Screenshots of both pages are saved
under $SWITCHBOARD_ARTIFACTS (default: artifacts/ in the repository).

SWITCHBOARD_DEMO_PAGES=static serves the page from a local HTTP server instead of the
gateways (the page then reaches its gateway through `?ws=`), for gateways built without
the web assets. Every wait is bounded; every process is stopped by PID.
"""
import asyncio
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import websockets

from harness import CheckFailed, Gateway, free_port, http_get

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB = os.path.join(REPO, "Sources", "SwitchboardServer", "Resources", "web")
WAIT = 20  # seconds, the longest any single step may take


def wait_http(url, what, seconds=WAIT):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            status, body = http_get(url, timeout=1)
            if status == 200:
                return body
            last = f"HTTP {status}"
        except Exception as e:  # not listening yet
            last = repr(e)
        time.sleep(0.1)
    raise CheckFailed(f"{what}: {url} not ready within {seconds} s ({last})")


class Page:
    """A DevTools protocol session with one page target."""

    def __init__(self, name, socket_):
        self.name = name
        self.ws = socket_
        self.counter = 0
        self.waiting = {}
        self.console = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self.waiting.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("method") == "Runtime.consoleAPICalled":
                    args = message["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                elif message.get("method") == "Runtime.exceptionThrown":
                    details = message["params"]["exceptionDetails"]
                    self.console.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        except websockets.ConnectionClosed:
            pass

    async def call(self, method, params=None):
        self.counter += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.counter] = future
        await self.ws.send(json.dumps({"id": self.counter, "method": method, "params": params or {}}))
        try:
            reply = await asyncio.wait_for(future, WAIT)
        except asyncio.TimeoutError:
            raise CheckFailed(f"{self.name}: no answer to {method} within {WAIT} s")
        if "error" in reply:
            raise CheckFailed(f"{self.name}: {method} failed: {reply['error']}")
        return reply.get("result", {})

    async def eval(self, expression):
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise CheckFailed(f"{self.name}: {expression!r} threw {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression, what, seconds=WAIT):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if await self.eval(expression):
                return
            await asyncio.sleep(0.1)
        raise CheckFailed(f"{self.name}: {what} did not happen within {seconds} s\n{await self.describe()}")

    async def describe(self):
        state = await self.eval("document.body && document.body.dataset.state + ' | ' + document.getElementById('status').textContent.replace(/\\s+/g, ' ')")
        log = await self.eval("Array.from(document.querySelectorAll('#messages li')).map(li => li.dataset.kind + ': ' + li.textContent).join('\\n')")
        console = "\n".join(self.console[-10:])
        return f"  page state: {state}\n  page messages:\n{log}\n  console:\n{console}"

    async def type(self, selector, text):
        """Focuses an input, clears it and types text as keyboard input."""
        await self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.value = ''; }})()")
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector):
        """A real mouse click in the middle of the element."""
        box = await self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2, e.disabled]; })()")
        if not box:
            raise CheckFailed(f"{self.name}: no element {selector}")
        if box[2]:
            raise CheckFailed(f"{self.name}: {selector} is disabled")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    async def screenshot(self, path):
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(result["data"]))

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


def js_has_message(kind, sender, text, room=None):
    selector = f'#messages li[data-kind="{kind}"][data-from="{sender}"]' + (f'[data-room="{room}"]' if room else "")
    return (f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
            f".some(li => li.querySelector('.text').textContent === {json.dumps(text)})")


async def open_page(browser, debug_port, name, url):
    context = (await cdp_call(browser, "Target.createBrowserContext", {"disposeOnDetach": True}))["browserContextId"]
    target = (await cdp_call(browser, "Target.createTarget", {"url": "about:blank", "browserContextId": context}))["targetId"]
    socket_ = await websockets.connect(f"ws://127.0.0.1:{debug_port}/devtools/page/{target}", max_size=None)
    page = Page(name, socket_)
    await page.call("Runtime.enable")
    await page.call("Page.enable")
    await page.call("Emulation.setDeviceMetricsOverride", {"width": 960, "height": 720, "deviceScaleFactor": 1, "mobile": False})
    await page.call("Page.navigate", {"url": url})
    await page.wait_for("typeof Switchboard === 'object' && !!document.getElementById('connect')", f"loading {url}")
    return page


_browser_counter = 0


async def cdp_call(browser, method, params):
    global _browser_counter
    _browser_counter += 1
    await browser.send(json.dumps({"id": _browser_counter, "method": method, "params": params}))
    deadline = time.time() + WAIT
    while True:
        raw = await asyncio.wait_for(browser.recv(), max(0.1, deadline - time.time()))
        reply = json.loads(raw)
        if reply.get("id") == _browser_counter:
            if "error" in reply:
                raise CheckFailed(f"browser: {method} failed: {reply['error']}")
            return reply["result"]


async def login(page, name, gateway_id):
    await page.type("#name", name)
    await page.click("#connect")
    await page.wait_for("document.body.dataset.state === 'ready'", f"{name} connecting")
    await page.wait_for(f"document.getElementById('gateway').textContent === {json.dumps(gateway_id)}",
                        f"{name}'s page showing gateway {gateway_id}")
    await page.wait_for(f"document.getElementById('me').textContent === {json.dumps(name)}", f"{name}'s page showing its user")


async def join(page, room):
    await page.type("#room", room)
    await page.click("#join")
    await page.wait_for(f"!!document.querySelector('#rooms li[data-room={json.dumps(room)}]')", f"joining {room}")


async def send(page, to, text, button):
    await page.type("#to", to)
    await page.type("#text", text)
    await page.click(button)


def js_members(room, user):
    return (f"(document.querySelector('[data-members=\"{room}\"]') || {{textContent: ''}}).textContent"
            f".replace('Here: ', '').split(', ').includes({json.dumps(user)})")


async def scenario(debug_port, url_a, url_b, gw2, artifacts, history, presence):
    version = json.loads(wait_http(f"http://127.0.0.1:{debug_port}/json/version", "chromium"))
    async with websockets.connect(version["webSocketDebuggerUrl"], max_size=None) as browser:
        alice = await open_page(browser, debug_port, "alice's page", url_a)
        bob = await open_page(browser, debug_port, "bob's page", url_b)
        try:
            await login(alice, "alice", "gw-1")
            await login(bob, "bob", "gw-2")
            await join(alice, "lobby")
            await join(bob, "lobby")
            if presence:
                await alice.wait_for(js_members("lobby", "bob"), "alice's page listing bob in lobby (his joined event)")
                await bob.wait_for(js_members("lobby", "alice") + " && " + js_members("lobby", "bob"),
                                   "bob's page listing alice and bob (the presence answer)")

            await send(alice, "bob", "hello bob, from alice on gw-1", "#send-direct")
            await bob.wait_for(js_has_message("direct", "alice", "hello bob, from alice on gw-1"), "bob getting alice's direct message")
            await alice.wait_for(js_has_message("direct outgoing", "alice", "hello bob, from alice on gw-1"), "alice seeing her sent message")

            await send(bob, "lobby", "hi lobby, bob on gw-2 here", "#send-room")
            await alice.wait_for(js_has_message("room", "bob", "hi lobby, bob on gw-2 here", "lobby"), "alice getting bob's room message")
            await bob.wait_for(js_has_message("room", "bob", "hi lobby, bob on gw-2 here", "lobby"), "bob getting his own room message")

            await alice.screenshot(os.path.join(artifacts, "demo-alice-gw-1.png"))
            await bob.screenshot(os.path.join(artifacts, "demo-bob-gw-2.png"))

            # gw-2 goes away and comes back on the same port: bob's page reconnects and re-joins.
            gw2.stop()
            await bob.wait_for("document.body.dataset.state !== 'ready'", "bob's page noticing that gw-2 stopped")
            if history:
                # Sent while bob is connected nowhere: kept in his stream and the room's.
                await send(alice, "bob", "sent while you were away", "#send-direct")
                await alice.wait_for(js_has_message("direct outgoing", "alice", "sent while you were away"), "alice's direct to offline bob acked")
                await send(alice, "lobby", "lobby news while bob was away", "#send-room")
                await alice.wait_for(js_has_message("room", "alice", "lobby news while bob was away", "lobby"), "alice's room message")
            gw2.restart_on_same_port(WAIT)
            await bob.wait_for("document.body.dataset.state === 'ready' && "
                               "Array.from(document.querySelectorAll('#messages li.system')).some(li => li.textContent.includes('Re-joined lobby'))",
                               "bob's page reconnecting to gw-2 and re-joining lobby")
            if history:
                await bob.wait_for(js_has_message("direct", "alice", "sent while you were away"), "bob's page recovering the direct sent while away")
                await bob.wait_for(js_has_message("room", "alice", "lobby news while bob was away", "lobby"),
                                   "bob's page recovering the room message sent while away")
                await bob.wait_for("Array.from(document.querySelectorAll('#messages li.system'))"
                                   ".some(li => li.textContent.includes('Reconnected: recovered'))", "bob's page saying it recovered")
            await send(alice, "lobby", "welcome back, bob", "#send-room")
            await bob.wait_for(js_has_message("room", "alice", "welcome back, bob", "lobby"), "bob getting a room message after the reconnect")
            if presence:
                await bob.wait_for(js_members("lobby", "alice"), "bob's page listing alice again after the re-join")
                flapped = await alice.eval("Array.from(document.querySelectorAll('#messages li.system')).some(li => li.textContent.includes('bob left'))")
                if flapped or not await alice.eval(js_members("lobby", "bob")):
                    raise CheckFailed("bob's reconnect within the grace showed him leaving on alice's page:\n" + await alice.describe())
            await bob.screenshot(os.path.join(artifacts, "demo-bob-gw-2-reconnected.png"))
            for page in (alice, bob):
                errors = [line for line in page.console if line.startswith("exception")]
                if errors:
                    raise CheckFailed(f"{page.name}: script errors: {errors}")
        finally:
            await alice.close()
            await bob.close()


def serve_static(port):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=WEB))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(binary):
    amqp_url = os.environ.get("SWITCHBOARD_AMQP_URL")
    if not amqp_url:
        sys.exit("demo_check: SWITCHBOARD_AMQP_URL is not set; start a broker with "
                 "`eval \"$(scripts/rabbitmq.sh start DIR)\"` (two gateways need a shared backplane)")
    mode = os.environ.get("SWITCHBOARD_DEMO_PAGES", "gateway")
    if mode not in ("gateway", "static"):
        sys.exit(f"demo_check: SWITCHBOARD_DEMO_PAGES must be 'gateway' or 'static', not {mode!r}")
    artifacts = os.environ.get("SWITCHBOARD_ARTIFACTS") or os.path.join(REPO, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    # Serve this checkout's page and client, not the copy a build put beside the binary.
    web_root = WEB if "--web-root" in help_text else None

    work = tempfile.mkdtemp(prefix="switchboard-demo-")
    port1, port2, debug_port = free_port(), free_port(), free_port()
    extra = ["--backplane", amqp_url] + (["--web-root", web_root] if web_root else [])
    redis_url = os.environ.get("SWITCHBOARD_REDIS_URL")
    history = bool(redis_url) and "--history" in help_text
    if history:
        extra += ["--history", f"{redis_url}?prefix=demo{os.getpid()}"]
    presence = bool(redis_url) and "--presence" in help_text
    if presence:
        # A grace longer than gw-2's restart: bob's reconnect must not show as leaving.
        extra += ["--presence", f"{redis_url}?prefix=demo{os.getpid()}", "--presence-grace", "30"]
    gw1 = Gateway(binary, "gw-1", port1, work, extra)
    gw2 = Gateway(binary, "gw-2", port2, work, extra)
    chromium = static = None
    try:
        gw1.restart_on_same_port(WAIT)
        gw2.restart_on_same_port(WAIT)
        query = "maxDelayMs=2000"  # bounds the reconnect wait after gw-2's restart
        if mode == "gateway":
            for gw in (gw1, gw2):
                status, body = http_get(f"http://127.0.0.1:{gw.port}/")
                if status != 200 or b"/switchboard.js" not in body:
                    raise CheckFailed(f"{gw.id} does not serve the demo page at / (HTTP {status}); "
                                      "build with the web assets, or set SWITCHBOARD_DEMO_PAGES=static")
                status, body = http_get(f"http://127.0.0.1:{gw.port}/switchboard.js")
                if status != 200 or b"Switchboard" not in body:
                    raise CheckFailed(f"{gw.id} does not serve /switchboard.js (HTTP {status})")
            url_a = f"http://127.0.0.1:{port1}/?{query}"
            url_b = f"http://127.0.0.1:{port2}/?{query}"
        else:
            static_port = free_port()
            static = serve_static(static_port)
            url_a = f"http://127.0.0.1:{static_port}/index.html?ws=ws://127.0.0.1:{port1}/ws&{query}"
            url_b = f"http://127.0.0.1:{static_port}/index.html?ws=ws://127.0.0.1:{port2}/ws&{query}"
        chromium = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
             "--disable-backgrounding-occluded-windows", "--disable-extensions",
             f"--remote-debugging-port={debug_port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={work}/profile", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        asyncio.run(asyncio.wait_for(scenario(debug_port, url_a, url_b, gw2, artifacts, history, presence), 240))
        recovered = " + messages sent meanwhile recovered (Redis history)" if history else ""
        if presence:
            recovered += " + who is here listed live, no leave on the reconnect (Redis presence)"
        print(f"demo chat in headless chromium: PASS (direct gw-1→gw-2, room gw-2→both, gw-2 restart → reconnect + "
              f"re-join{recovered}; pages from {mode}; screenshots in {artifacts})")
    except (CheckFailed, asyncio.TimeoutError) as e:
        for gw in (gw1, gw2):
            tail = gw.log_tail()
            if tail:
                print(f"--- {gw.id} log tail ---\n{tail}", file=sys.stderr)
        sys.exit(f"demo_check: FAIL: {e or 'timed out'}")
    finally:
        if chromium is not None:
            chromium.terminate()
            try:
                chromium.wait(timeout=15)
            except subprocess.TimeoutExpired:
                chromium.kill()
                chromium.wait(timeout=5)
        gw1.stop()
        gw2.stop()
        if static is not None:
            static.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: demo_check.py PATH/TO/switchboard")
    main(sys.argv[1])
