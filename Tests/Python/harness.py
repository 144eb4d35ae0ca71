"""What the Python checks share: loopback ports, plain HTTP, and `switchboard serve` processes.

Imported by the check scripts beside it (they run as `python Tests/Python/NAME.py`, so
this folder is on sys.path). Every wait is bounded; processes are stopped by PID.
"""
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


class CheckFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2):
    """(status, body bytes); an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Gateway:
    """One `switchboard serve --auth none` process; its output goes to a log file shown on failure."""

    def __init__(self, binary, gateway_id, port, work, extra=(), env=None):
        self.args = [binary, "serve", "--port", str(port), "--auth", "none", "--gateway-id", gateway_id,
                     "--drain-grace", "0", "--drain-window", "0", "--log-level", "warning", *extra]
        self.env = env
        self.id = gateway_id
        self.port = port
        self.log_path = os.path.join(work, f"{gateway_id}.log")
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env)

    def wait_ready(self, seconds):
        """Waits for /readyz to answer 200; CheckFailed if the process exits or time runs out."""
        deadline = time.time() + seconds
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise CheckFailed(f"gateway {self.id} exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                if http_get(url, timeout=1)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        raise CheckFailed(f"gateway {self.id} not ready within {seconds} s; log:\n{self.log_tail()}")

    def restart_on_same_port(self, seconds):
        """Starts the process until it is ready: right after a stop, the port may still be
        held by the previous process's sockets, and the new one exits; it is tried again."""
        deadline = time.time() + seconds
        while True:
            self.start()
            try:
                self.wait_ready(max(0.1, deadline - time.time()))
                return
            except CheckFailed:
                if self.process.poll() is None or time.time() >= deadline:
                    raise
                time.sleep(0.3)

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""
