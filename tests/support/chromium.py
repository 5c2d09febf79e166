"""A small Chrome DevTools Protocol client driving one headless Chromium, for page tests.

:func:`launch` starts ``chromium --headless=new`` with its own throwaway profile and
``--remote-debugging-port=0``, reads the port Chromium chose from ``DevToolsActivePort``,
connects to the browser's websocket with aiohttp and attaches to the page target (a flat
session). The :class:`Chromium` it yields offers :meth:`~Chromium.navigate`,
:meth:`~Chromium.evaluate`, :meth:`~Chromium.wait_for` and :meth:`~Chromium.screenshot`, and
collects what the page logged as errors and every URL it requested, so tests can assert none
and only their own server. Every await has a deadline, and the browser's whole process group
is killed and reaped on the way out, whatever happened.

The ``chromium`` fixture wraps :func:`launch` and skips the test when no Chromium is installed.
Screenshots go to :func:`artifact_path`: ``$PUSHGRES_TEST_ARTIFACTS`` if set, else
``<repo>/.pushgres/artifacts/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import pathlib
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson
import pytest

__all__ = [
    "ARTIFACTS_ENV",
    "CdpError",
    "Chromium",
    "artifact_path",
    "chromium",
    "chromium_path",
    "launch",
]

ARTIFACTS_ENV: Final = "PUSHGRES_TEST_ARTIFACTS"
REPO: Final = pathlib.Path(__file__).resolve().parents[2]
BINARIES: Final = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
WINDOW: Final = (1280, 800)

DEFAULT_TIMEOUT_S: Final = 10.0
STARTUP_TIMEOUT_S: Final = 20.0
EXIT_TIMEOUT_S: Final = 5.0
POLL_INTERVAL_S: Final = 0.05

FLAGS: Final = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--remote-debugging-port=0",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
)


class CdpError(Exception):
    """Chromium answered a DevTools command with an error, or a page script threw."""


def chromium_path() -> str | None:
    """The Chromium (or Chrome) binary on ``PATH``, or None."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def artifact_path(name: str) -> pathlib.Path:
    """Where a test artifact called ``name`` goes (the folder is created)."""
    given = os.environ.get(ARTIFACTS_ENV)
    folder = pathlib.Path(given) if given else REPO / ".pushgres" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class Chromium:
    """One page of a running headless Chromium, driven over a flat DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._session: str | None = None
        self._closed: BaseException | None = None
        self.console_errors: list[str] = []
        """Errors the page reported: ``console.error``/``assert`` calls, uncaught exceptions and
        browser log entries of level error (failed loads, CSP violations), each prefixed with
        its source."""
        self.requests: list[str] = []
        """Every URL the page requested, in order."""
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name="chromium devtools reader"
        )

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one DevTools command to the page and return its result."""
        if self._closed is not None:
            raise CdpError(f"the DevTools connection is closed ({self._closed!r})")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if self._session is not None:
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                await self._ws.send_str(orjson.dumps(message).decode())
                return await future
        finally:
            self._pending.pop(message_id, None)
            _discard(future)

    async def attach(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Attach to the first page target and enable the domains the tests rely on."""
        targets = await self.send("Target.getTargets", timeout_s=timeout_s)
        pages = [t for t in targets["targetInfos"] if t["type"] == "page"]
        if not pages:
            raise CdpError("Chromium has no page target")
        attached = await self.send(
            "Target.attachToTarget",
            {"targetId": pages[0]["targetId"], "flatten": True},
            timeout_s=timeout_s,
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable", timeout_s=timeout_s)
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            timeout_s=timeout_s,
        )

    async def navigate(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Load ``url`` and wait for its load event."""
        loaded = self._expect("Page.loadEventFired")
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.send("Page.navigate", {"url": url}, timeout_s=timeout_s)
                if result.get("errorText"):
                    raise CdpError(f"cannot load {url}: {result['errorText']}")
                await loaded
        finally:
            _discard(loaded)
            self._waiters.get("Page.loadEventFired", []).remove(loaded)

    async def evaluate(self, expression: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout_s=timeout_s,
        )
        details = result.get("exceptionDetails")
        if details:
            raise CdpError(f"{expression!r} threw: {_describe_exception(details)}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """Evaluate ``expression`` until it is truthy and return that value."""
        value: Any = None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    value = await self.evaluate(expression, timeout_s=timeout_s)
                    if value:
                        return value
                    await asyncio.sleep(POLL_INTERVAL_S)
        except TimeoutError:
            raise TimeoutError(
                f"{expression!r} still {value!r} after {timeout_s} s; "
                f"page errors: {self.console_errors}"
            ) from None

    async def screenshot(
        self, path: pathlib.Path, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> pathlib.Path:
        """Save the viewport as a PNG at ``path``."""
        result = await self.send("Page.captureScreenshot", {"format": "png"}, timeout_s=timeout_s)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def _expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(method, []).append(future)
        return future

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                self._dispatch(orjson.loads(frame.data))
            self._fail(CdpError("Chromium closed the DevTools connection"))
        except (Exception, asyncio.CancelledError) as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self._closed = exc
        for future in [*self._pending.values(), *itertools.chain(*self._waiters.values())]:
            if not future.done():
                future.set_exception(CdpError(f"the DevTools connection is gone ({exc!r})"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            future = self._pending.get(message["id"])
            if future is None or future.done():
                return
            if "error" in message:
                future.set_exception(CdpError(f"{message['error']}"))
            else:
                future.set_result(message.get("result", {}))
            return
        method = message.get("method", "")
        params = message.get("params", {})
        self._record(method, params)
        for future in self._waiters.get(method, []):
            if not future.done():
                future.set_result(params)

    def _record(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(_describe_remote(arg) for arg in params.get("args", []))
            self.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console_errors.append(f"exception: {_describe_exception(details)}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                where = f" ({entry['url']})" if entry.get("url") else ""
                self.console_errors.append(f"log.{entry.get('source')}: {entry.get('text')}{where}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    async def aclose(self) -> None:
        """Stop reading and close the websocket (the browser itself is ended by :func:`launch`)."""
        self._reader.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._reader
        with contextlib.suppress(Exception):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._ws.close()


def _discard(future: asyncio.Future[Any]) -> None:
    # A waiter failed by a lost connection after its caller gave up must not be reported as
    # "exception was never retrieved".
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()


def _describe_remote(value: dict[str, Any]) -> str:
    if "value" in value:
        return str(value["value"])
    return str(value.get("description") or value.get("type", "?"))


def _describe_exception(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    text = exception.get("description") or details.get("text", "?")
    return f"{text} at {details.get('url', '')}:{details.get('lineNumber', '?')}"


async def _devtools_address(
    profile: pathlib.Path, process: asyncio.subprocess.Process, log: pathlib.Path
) -> tuple[int, str]:
    port_file = profile / "DevToolsActivePort"
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"chromium exited with {process.returncode}: {_tail(log)}")
                lines = port_file.read_text().splitlines() if port_file.exists() else []
                if len(lines) >= 2:
                    return int(lines[0]), lines[1]
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise RuntimeError(
            f"chromium wrote no DevToolsActivePort in {STARTUP_TIMEOUT_S} s: {_tail(log)}"
        ) from None


def _tail(log: pathlib.Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _end(process: asyncio.subprocess.Process) -> None:
    # Chromium forks renderer, GPU and utility processes into the group it leads
    # (start_new_session), so the whole group goes, not only the browser process.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            await process.wait()


@contextlib.asynccontextmanager
async def launch(binary: str) -> AsyncIterator[Chromium]:
    """Run a headless Chromium with a fresh profile and yield a client attached to its page."""
    profile = pathlib.Path(tempfile.mkdtemp(prefix="pushgres-chromium-"))
    log = profile / "chromium.log"
    try:
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        try:
            port, path = await _devtools_address(profile, process, log)
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
                browser = Chromium(ws)
                try:
                    await browser.attach()
                    yield browser
                finally:
                    await browser.aclose()
        finally:
            await _end(process)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def chromium() -> AsyncIterator[Chromium]:
    """A headless Chromium page (skips the test when Chromium is not installed)."""
    binary = chromium_path()
    if binary is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium); it renders the dashboard"
        )
    async with launch(binary) as browser:
        yield browser
