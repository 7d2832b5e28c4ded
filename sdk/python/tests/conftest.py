"""Shared by the tests: the cluster the interop harness started (its configuration in the
INTEROP environment variable), official socket.io-client listeners driven over pipes, and
one JSON result line per test for the harness's table."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

CFG: dict[str, Any] = json.loads(os.environ.get("INTEROP", "{}"))
JS_DIR = Path(CFG.get("js_dir", Path(__file__).resolve().parents[3] / "crates/interop/js"))
WAIT = 5.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in item.keywords and not CFG:
            item.add_marker(
                pytest.mark.skip(reason="needs the interop harness's cluster (cargo xtask interop)")
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: runs against the harness's 3-node cluster")


_UNIT = {"passed": 0, "failed": [], "ms": 0.0}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With INTEROP set, one result line per cluster test for the harness's table; the
    unit tests (the wire format) as one line at the end."""
    if not CFG or os.environ.get("INTEROP_LINES") != "1":
        return
    if report.when != "call" and not (report.when == "setup" and not report.passed):
        return
    if "cluster" not in report.keywords:
        _UNIT["ms"] += report.duration * 1000
        if report.passed:
            _UNIT["passed"] += 1
        else:
            _UNIT["failed"].append(report.nodeid.split("::")[-1])
        return
    detail = "" if report.passed else str(report.longreprtext).strip().splitlines()[-1]
    _line(
        report.nodeid.split("::")[-1].replace("_", " "),
        report.passed,
        detail,
        report.duration * 1000,
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if CFG and os.environ.get("INTEROP_LINES") == "1":
        failed = _UNIT["failed"]
        _line(
            f"the wire format: {_UNIT['passed']} checks against sdk/fixtures/wire.json",
            not failed,
            f"failed: {', '.join(failed)}" if failed else "",
            _UNIT["ms"],
        )


def _line(case: str, ok: bool, detail: str, ms: float) -> None:
    # On a line of its own, flushed before pytest's own output goes on.
    sys.stdout.flush()
    sys.__stdout__.write(
        "\n" + json.dumps({"case": case, "ok": ok, "detail": detail, "ms": int(ms)}) + "\n"
    )
    sys.__stdout__.flush()


class Listener:
    """The official JS client (``crates/interop/js/listen.mjs``) on one node."""

    def __init__(
        self,
        url: str,
        token: str,
        rooms: tuple[str, ...] = (),
        namespace: str = "/",
        ack: Any = None,
    ) -> None:
        config = {"url": url, "namespace": namespace, "token": token, "rooms": list(rooms)}
        if ack is not None:
            config["ack"] = ack
        self._proc = subprocess.Popen(
            ["node", "listen.mjs"],
            cwd=JS_DIR,
            env={**os.environ, "LISTEN": json.dumps(config)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next(lambda m: "ready" in m or "connect_error" in m, timeout=10)
        if "ready" not in ready:
            raise AssertionError(f"listener did not connect: {ready}")
        self.sid: str = ready["ready"]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            m = json.loads(line)
            # The gateway's greeting, not something a test published.
            if m.get("event") != "connected":
                self._lines.put(m)

    def next(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        """The next line that ``match`` accepts (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for the listener")
            try:
                m = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if match(m):
                return m

    def expect(self, event: str, timeout: float = WAIT) -> list[Any]:
        """The arguments of the next ``event``."""
        got: list[Any] = self.next(lambda m: m.get("event") == event, timeout)["args"]
        return got

    def events_until(self, marker: str, timeout: float = WAIT) -> list[str]:
        """The names of the events received before ``marker`` (which is consumed)."""
        names: list[str] = []
        while True:
            m = self.next(lambda m: "event" in m, timeout)
            if m["event"] == marker:
                return names
            names.append(m["event"])

    def emit(self, event: str, *args: Any, ack_id: Optional[int] = None) -> None:
        """Makes the client emit ``event``; with ``ack_id``, its answer arrives as
        ``{"acked": ack_id, "args"}``."""
        cmd: dict[str, Any] = {"emit": event, "args": list(args)}
        if ack_id is not None:
            cmd["id"] = ack_id
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture
def listeners() -> Any:
    """Makes listeners and closes them after the test."""
    made: list[Listener] = []

    def make(*args: Any, **kwargs: Any) -> Listener:
        listener = Listener(*args, **kwargs)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()
