"""`pushgres demo --serve`: the demo's check, its dashboard and metrics, and the trickle after it.

A real run of the command on the test database (``PUSHGRES_DSN``), with its own simulator and
daemon processes, stopped by Ctrl-C (SIGINT) as a person would.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import sys
import time

import aiohttp


async def _read_until(
    stream: asyncio.StreamReader, pattern: str, out: list[str], timeout_s: float
) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {pattern!r} in the demo's output: {''.join(out)[-2000:]}"
        try:
            line = await asyncio.wait_for(stream.readline(), remaining)
        except TimeoutError:
            continue
        assert line, f"the demo ended before {pattern!r}: {''.join(out)[-2000:]}"
        out.append(line.decode())
        found = re.search(pattern, out[-1])
        if found:
            return found


async def _claimed(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pushgres_claimed_total{")
    )


async def test_demo_serve_prints_its_pages_and_keeps_sending_until_ctrl_c(
    tmp_path: pathlib.Path, dsn: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pushgres",
        "demo",
        "--count",
        "400",
        "--serve",
        "--state-dir",
        str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PUSHGRES_DSN": dsn, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    out: list[str] = []
    try:
        found = await _read_until(
            proc.stdout, r"dashboard: (http://127\.0\.0\.1:\d+)/dashboard/", out, 120
        )
        base = found.group(1)
        assert f"metrics: {base}/metrics" in out[-1]
        await _read_until(proc.stdout, r"check: .*: OK", out, 120)
        await _read_until(proc.stdout, r"serving: watch", out, 30)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{base}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(f"{base}/dashboard/") as resp:
                assert resp.status == 200
            before = await _claimed(session, base)
            deadline = time.monotonic() + 20
            while await _claimed(session, base) <= before:  # the trickle goes on
                assert time.monotonic() < deadline, "no traffic after the check"
                await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, "".join(out)[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
