"""A synchronous QMP channel on top of qemu.qmp's asyncio QMPClient.

The client runs in its own event-loop thread, so callers on any thread get plain blocking calls with
timeouts. Every event QEMU sends is recorded (none is dropped) and every command, reply and event is
written to the VM's QMP log. A log that cannot be written (a full disk) never breaks the channel: the
first such error is kept in `log_error` for the failure report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from qemu.qmp import EventListener, ExecuteError, Message, QMPClient, QMPError

from harness.errors import InfrastructureError

T = TypeVar("T")


@dataclass(frozen=True)
class QmpEvent:
    name: str
    data: dict[str, Any]
    timestamp: float  # host time.monotonic() when recorded


class QmpCommandError(InfrastructureError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        self.command = command
        self.error_class = error_class
        self.description = description
        super().__init__(f"QMP {command} failed: {error_class}: {description}")


class QmpReply:
    """The answer to a command already sent (QmpChannel.submit)."""

    def __init__(self, channel: QmpChannel, name: str, future: Future[object]) -> None:
        self._channel = channel
        self.name = name
        self._future = future

    def wait(self, timeout: float = 10.0) -> object:
        """The command's result; QmpCommandError if QEMU refused it, InfrastructureError if no answer came."""
        return self._channel._answer(self.name, self._future, timeout)


class _Recorder(EventListener):
    """Takes every event as it arrives, before any queue, so nothing can be dropped."""

    def __init__(self, channel: QmpChannel) -> None:
        super().__init__()
        self._channel = channel

    def accept(self, event: Message) -> bool:
        self._channel._record(event)
        return False


class QmpChannel:
    def __init__(self, vm_name: str, log_path: Path) -> None:
        self.vm_name = vm_name
        self._log: TextIO = log_path.open("a", encoding="utf-8")
        self._log_lock = threading.Lock()
        self._events: list[QmpEvent] = []
        self._events_changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp-{vm_name}", daemon=True)
        self._thread.start()
        self._client: QMPClient | None = None
        self._socket: socket.socket | None = None
        self.log_path = log_path
        self.log_error: OSError | None = None  # the first failed write to the QMP log
        # Called on the event-loop thread with each event as it arrives: keep it short, never block.
        self.on_event: Callable[[QmpEvent], None] | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _schedule(self, make: Callable[[], Coroutine[Any, Any, T]], what: str) -> Future[T]:
        if self._loop.is_closed():
            raise InfrastructureError(f"{self.vm_name}: QMP channel is closed; cannot {what}")
        return asyncio.run_coroutine_threadsafe(make(), self._loop)

    def _result(self, future: Future[T], timeout: float, what: str) -> T:
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise InfrastructureError(f"{self.vm_name}: QMP {what} got no answer within {timeout:g} s") from None

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float, what: str) -> T:
        return self._result(self._schedule(make, what), timeout, what)

    def _answer(self, name: str, future: Future[object], timeout: float) -> object:
        """A command's result, logged; QEMU's refusal and a broken channel as the harness's errors."""
        try:
            result = self._result(future, timeout, name)
        except ExecuteError as exc:
            self._write_log("error", {"execute": name, "error": str(exc)})
            raise QmpCommandError(name, exc.error_class, str(exc)) from exc
        except (QMPError, OSError) as exc:
            self._write_log("error", {"execute": name, "error": str(exc)})
            raise InfrastructureError(f"{self.vm_name}: QMP {name} failed: {exc}") from exc
        self._write_log("reply", {"execute": name, "return": result})
        return result

    def _write_log(self, direction: str, payload: object) -> None:
        line = json.dumps(payload, default=str, sort_keys=True)
        with self._log_lock:
            if self._log.closed:
                return
            try:
                self._log.write(f"{time.time():.6f} {direction} {line}\n")
                self._log.flush()
            except OSError as exc:  # a full disk must not take QMP down with it; the report says so
                if self.log_error is None:
                    self.log_error = exc

    def _record(self, message: Message) -> None:
        data = message.get("data")
        event = QmpEvent(str(message["event"]), dict(data) if isinstance(data, dict) else {}, time.monotonic())
        self._write_log("event", dict(message))
        with self._events_changed:
            self._events.append(event)
            self._events_changed.notify_all()
        if self.on_event is not None:
            self.on_event(event)

    # -- public API -----------------------------------------------------------------------------

    def connect(self, sock: socket.socket, timeout: float) -> None:
        """Negotiate QMP over an already-connected socket (one end of a socketpair)."""

        async def connect() -> None:
            client = QMPClient(self.vm_name)
            client.register_listener(_Recorder(self))
            await client.connect(sock)
            self._client = client
            self._socket = sock

        try:
            self._run(connect, timeout, "connect")
        except QMPError as exc:
            raise InfrastructureError(f"{self.vm_name}: QMP handshake failed: {exc}") from exc

    def command(self, name: str, arguments: Mapping[str, object] | None = None, timeout: float = 10.0) -> object:
        return self.submit(name, arguments).wait(timeout)

    def submit(self, name: str, arguments: Mapping[str, object] | None = None) -> QmpReply:
        """Send a command now and take its answer later (`wait`), so the caller works meanwhile."""
        client = self._client
        if client is None:
            raise InfrastructureError(f"{self.vm_name}: QMP is not connected; cannot run {name}")
        self._write_log("send", {"execute": name, "arguments": arguments or {}})

        async def execute() -> object:
            return await client.execute(name, arguments)

        return QmpReply(self, name, self._schedule(execute, name))

    def send_fd(self, name: str, fd: int, timeout: float = 10.0) -> None:
        """Hand QEMU an open file descriptor (SCM_RIGHTS on the QMP socket) and name it with `getfd`, so
        commands can use it as `fd:NAME` without QEMU opening any path itself. QEMU owns its copy (QMP
        `closefd` releases it); the caller keeps and closes its own."""
        client = self._client
        if client is None:
            raise InfrastructureError(f"{self.vm_name}: QMP is not connected; cannot pass a file descriptor")
        self._write_log("send", {"execute": "getfd", "arguments": {"fdname": name}, "fd": fd})

        async def pass_fd() -> object:
            client.send_fd_scm(fd)  # the descriptor rides on a byte of its own, ahead of the command
            return await client.execute("getfd", {"fdname": name})

        self._answer("getfd", self._schedule(pass_fd, "getfd"), timeout)

    @property
    def transport_socket(self) -> socket.socket | None:
        """The harness's end of the QMP socketpair (fault-injection tests close it under the harness)."""
        return self._socket

    def hmp(self, command_line: str, timeout: float = 10.0, cpu: int = 0) -> str:
        """Run a human-monitor command on vCPU `cpu` and return its text output."""
        output = self.command("human-monitor-command", {"command-line": command_line, "cpu-index": cpu}, timeout)
        if not isinstance(output, str):
            raise InfrastructureError(f"{self.vm_name}: HMP {command_line!r} returned {output!r}")
        return output

    @property
    def events(self) -> list[QmpEvent]:
        """Every event received so far, oldest first."""
        with self._events_changed:
            return list(self._events)

    def wait_event(self, name: str, timeout: float, since: int = 0) -> QmpEvent | None:
        """The first event called `name` at index >= since, waiting up to `timeout`; None if none came."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while True:
                for event in self._events[since:]:
                    if event.name == name:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._events_changed.wait(remaining)

    def close(self) -> None:
        """Disconnect and stop the event-loop thread. Safe to call more than once."""
        if self._loop.is_closed():
            return
        client = self._client
        if client is not None:
            # QEMU may be gone already; there is nothing left to say to it then.
            with contextlib.suppress(InfrastructureError, QMPError, OSError, EOFError):
                self._run(client.disconnect, 5.0, "disconnect")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
        with self._log_lock:
            try:
                self._log.close()
            except OSError as exc:  # what was left to write could not be (a full disk)
                if self.log_error is None:
                    self.log_error = exc
