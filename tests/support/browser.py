"""Headless Chromium driven over the DevTools protocol on a pipe: no chromedriver, Selenium or websocket.

``--remote-debugging-pipe`` makes Chromium read protocol commands (JSON, NUL-terminated)
from its fd 3 and write replies and events to its fd 4. The network is off: a proxy
that does not exist, a resolver that resolves nothing, and the protocol's offline
emulation; every request the page makes is recorded in ``Browser.requests``.

    with Browser() as b:
        b.open("file:///tmp/map.html")
        b.evaluate("document.title")
        png = b.screenshot()
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM_BIN`` when set (a path or a name on PATH; None when it names no
    executable, so ``CHROMIUM_BIN=none`` hides the browser), else Debian's, else the first of CHROMIUM_NAMES."""
    override = os.environ.get("CHROMIUM_BIN")
    if override is not None:
        return shutil.which(override)
    for name in ("/usr/bin/chromium", *CHROMIUM_NAMES):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, width: int = 1400, height: int = 900, binary: str | None = None, loopback: bool = False):
        """``loopback``: allow http://127.0.0.1 (a test's own server); everything else stays unreachable."""
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no chromium found (apt-get install chromium)")
        self.width, self.height = width, height
        self.loopback = loopback
        self.requests: list[str] = []
        self.console: list[str] = []
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []

    # ------------------------------------------------------------------ process

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: fd 3 reads commands, fd 4 writes replies
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=" + ("127.0.0.1" if self.loopback else ""),
            "--host-resolver-rules=MAP * ~NOTFOUND" + (", EXCLUDE 127.0.0.1" if self.loopback else ""),
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=sorted({3, 4, to_browser_r, from_browser_w}),  # 3 and 4: kept open after wire()
            preexec_fn=wire,  # the tests start no threads before this
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Network.emulateNetworkConditions",
            session=True,
            offline=not self.loopback,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):  # closing anyway
            self.call("Browser.close", timeout=5)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def _read_message(self, timeout: float) -> dict:
        import select

        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError("no reply from chromium in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _note(self, message: dict) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
        self._events.append(message)

    def call(self, method: str, *, session: bool = False, timeout: float = 60, **params: Any) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._note(self._read_message(max(end - time.monotonic(), 0.01)))

    # ------------------------------------------------------------------ page

    def open(self, url: str, timeout: float = 120) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        self._events.clear()
        start = time.monotonic()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired", timeout)
        return time.monotonic() - start

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        result = self.call(
            "Runtime.evaluate",
            session=True,
            timeout=timeout,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {json.dumps(result['exceptionDetails'])[:800]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.05) -> Any:
        end = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(interval)

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0, button: str = "none") -> None:
        self.call(
            "Input.dispatchMouseEvent",
            session=True,
            type=kind,
            x=x,
            y=y,
            button=button,
            buttons=buttons,
            clickCount=1 if kind != "mouseMoved" else 0,
        )

    def drag(self, path: list[tuple[float, float]]) -> None:
        """Press the left button at the first point, move through the rest, release at the last."""
        (x0, y0), *rest = path
        self.mouse("mouseMoved", x0, y0)
        self.mouse("mousePressed", x0, y0, buttons=1, button="left")
        for x, y in rest:
            self.mouse("mouseMoved", x, y, buttons=1, button="left")
            time.sleep(0.02)
        self.mouse("mouseReleased", *rest[-1], buttons=0, button="left")

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, buttons=1, button="left")
        self.mouse("mouseReleased", x, y, buttons=0, button="left")

    def type_text(self, text: str) -> None:
        self.call("Input.insertText", session=True, text=text)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])


class FrameEval:
    """Evaluates JavaScript inside the page's one iframe (the explorer): in its execution context when
    Chromium runs the frame in the page's process, else in its own target (a sandboxed frame may be
    isolated out of process)."""

    def __init__(self, browser: Browser, timeout: float = 60):
        self.browser, self.context, self.session = browser, None, None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            children = browser.call("Page.getFrameTree", session=True)["frameTree"].get("childFrames") or []
            if children:
                frame_id = children[0]["frame"]["id"]
                for event in browser._events:
                    context = event.get("params", {}).get("context", {})
                    aux = context.get("auxData", {})
                    created = event.get("method") == "Runtime.executionContextCreated"
                    if created and aux.get("frameId") == frame_id and aux.get("isDefault"):
                        self.context = context["id"]
                        return
            # Out of process: the frame is its own target (and not a child in the page's frame tree).
            frames = [t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "iframe"]
            if frames:
                attached = browser.call("Target.attachToTarget", targetId=frames[0]["targetId"], flatten=True)
                self.session = attached["sessionId"]
                return
            with contextlib.suppress(BrowserError):
                browser.wait_event("Runtime.executionContextCreated", timeout=1)
        raise BrowserError("the explorer's frame never got a JavaScript context")

    def __call__(self, expression: str):
        browser = self.browser
        if self.context is not None:
            result = browser.call(
                "Runtime.evaluate", session=True, expression=expression, contextId=self.context, returnByValue=True
            )
        else:
            own, browser._session = browser._session, self.session
            try:
                result = browser.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
            finally:
                browser._session = own
        if "exceptionDetails" in result:
            raise BrowserError(str(result["exceptionDetails"])[:500])
        return result["result"].get("value")
