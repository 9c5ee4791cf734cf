#!/usr/bin/env python3
"""Drives qoq serve's chat page in headless Chromium over the DevTools protocol (issue #16), standard library only.

Loads the page, types a message into the text box and presses Enter as a person would, watches the assistant's
answer grow while it streams (at least three different lengths seen before it ends), presses Stop once it has
streamed enough, waits for the answer's statistics line, and saves a screenshot. Exit status 0 when all held.

  chat_page_cdp.py --url http://127.0.0.1:PORT/ --chromium /usr/bin/chromium --screenshot runs/chat-page.png
"""
import argparse, base64, json, os, re, socket, struct, subprocess, sys, tempfile, time, urllib.request


class WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), text frames in (unfragmented or continued)."""

    def __init__(self, url):
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("websocket closed")
            out += chunk
        return out

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                               else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if b0 & 0x0F == 0x9:  # ping: answer and go on
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class Page:
    def __init__(self, ws_url):
        self.ws, self.next_id, self.events = WebSocket(ws_url), 0, []

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--message", default="What is the capital of France?")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="qoq-chromium-")
    proc = subprocess.Popen([a.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1000,800",
                             "about:blank"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("chromium exited while starting")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = m.group(1) if m else None
        if port is None:
            raise RuntimeError("chromium did not open its DevTools port")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = Page(next(t for t in targets if t.get("type") == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=a.url)
        t0 = time.time()
        while page.js("document.readyState") != "complete" or not page.js("document.getElementById('model').textContent"):
            if time.time() - t0 > 30:
                raise RuntimeError("the page did not load")
            time.sleep(0.2)
        model = page.js("document.getElementById('model').textContent")
        # Type and press Enter, as a person would.
        page.js("document.getElementById('input').focus()")
        page.call("Input.insertText", text=a.message)
        for kind in ("keyDown", "keyUp"):
            page.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      **({"text": "\r"} if kind == "keyDown" else {}))
        lengths, stopped = [], False
        t0 = time.time()
        while True:
            state = page.js("""(() => { const a = document.querySelectorAll('.msg.assistant, .msg.error');
                const s = document.querySelectorAll('.stats');
                return {n: a.length, text: a.length ? a[a.length - 1].textContent : '', stats: s.length ? s[0].textContent : '',
                        user: [...document.querySelectorAll('.msg.user')].map(d => d.textContent)}; })()""")
            if state["stats"]:
                break
            if state["text"] and (not lengths or lengths[-1] != len(state["text"])):
                lengths.append(len(state["text"]))
            if len(lengths) >= 6 and not stopped:  # streamed enough: press Stop
                page.js("document.getElementById('stop').click()")
                stopped = True
            if time.time() - t0 > a.timeout:
                raise RuntimeError(f"no answer finished within {a.timeout} s (lengths seen: {lengths})")
            time.sleep(0.05)
        shot = page.call("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(os.path.abspath(a.screenshot)), exist_ok=True)
        with open(a.screenshot, "wb") as f:
            f.write(base64.b64decode(shot))
        problems = []
        if state["user"] != [a.message]:
            problems.append(f"the user message shown is {state['user']!r}")
        if not state["text"].strip() or state["n"] != 1 or page.js("document.querySelectorAll('.msg.error').length") > 0:
            problems.append(f"no clean assistant answer: {state['text']!r}")
        if len(lengths) < 3:
            problems.append(f"the answer did not stream (lengths seen while it grew: {lengths})")
        if "tokens" not in state["stats"]:
            problems.append(f"no statistics line: {state['stats']!r}")
        print(f"chat page: model {model!r}; answer streamed through {len(lengths)} lengths {lengths[:8]}…; "
              f"{'stopped with Stop; ' if stopped else ''}stats {state['stats']!r}; screenshot {a.screenshot}")
        print(f"answer: {state['text'][:200]!r}")
        if problems:
            print("chat page FAILED: " + "; ".join(problems), file=sys.stderr)
            return 1
        return 0
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
