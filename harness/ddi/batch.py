"""Many DDI calls in one agent round trip: `with vm.mm.batch() as b: pa = b.MmGetPhysicalAddress(va)`.

Inside the block every call returns at once with a Deferred; when the block ends, all the calls go
to the agent together (harness.agent.client.AgentClient.call_batch: through the mailbox, as many as
its request area holds per round trip), the agent runs them in order exactly as if each had come
alone, and each Deferred gets its typed result or its AgentError.

How a typed DDI method is batched without writing it twice: the method is run once against a
transport that records its request and stops it there, and once more, after the round trip,
against a transport that hands it the recorded answer, so it decodes the answer as it always does.
A call's arguments therefore cannot depend on another call's result in the same batch, and a method
that needs more than one request (none of the DDI methods does) cannot be batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from harness.agent.codec import Response, Value
from harness.errors import AgentError, MmhilError

if TYPE_CHECKING:
    from harness.guest import MemoryManager

T = TypeVar("T")


@runtime_checkable
class BatchTransport(Protocol):
    name: str

    def request_batch(self, requests: Sequence[tuple[str, Sequence[int | bytes]]],
                      timeout: float | None = None) -> list[Response]: ...


class BatchError(MmhilError):
    """A call that cannot go in a batch, or a result asked for before its batch ran."""


class Deferred(Generic[T]):
    """The result of one batched call, there once the batch has run."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._ran = False
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def value(self) -> T:
        """The call's result; raises its AgentError (or decoding error) if it failed."""
        if not self._ran:
            raise BatchError(f"{self.description}: its batch has not run yet (read .value after the with block)")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _settle(self, value: T | None, error: BaseException | None) -> None:
        self._ran = True
        self._value = value
        self._error = error


class _Recorded(Exception):
    def __init__(self, command: str, args: tuple[int | bytes, ...]) -> None:
        self.command = command
        self.args = args


class _Recorder:
    """A transport that records the one request a method makes and stops the method there."""

    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, command: str, *args: int | bytes, timeout: float | None = None) -> dict[str, Value]:
        raise _Recorded(command, args)


class _Replayer:
    """A transport that answers a method's request with the answer the batch brought back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._command = ""
        self._response: Response | None = None

    def expect(self, command: str, response: Response) -> None:
        self._command = command
        self._response = response

    def request(self, command: str, *args: int | bytes, timeout: float | None = None) -> dict[str, Value]:
        response, self._response = self._response, None
        if response is None:
            raise BatchError(f"{self._command} makes more than one agent request, so it cannot be batched")
        if not response.ok:
            raise AgentError(self.name, command, response.error_kind, response.error_message)
        return response.values


class _Call:
    def __init__(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 recorded: _Recorded, deferred: Deferred[Any]) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.recorded = recorded
        self.deferred = deferred


class Batch:
    """The DDI methods of a MemoryManager, deferred. Use as a context manager (MemoryManager.batch)."""

    def __init__(self, manager: MemoryManager, transport: BatchTransport, timeout: float | None) -> None:
        self._manager_type = type(manager)
        self._transport = transport
        # One manager each way for the whole batch: a method's only state is its transport.
        self._recording = self._manager_type(_Recorder(transport.name))
        self._replayer = _Replayer(transport.name)
        self._replaying = self._manager_type(self._replayer)
        self._timeout = timeout
        self._calls: list[_Call] = []

    def __getattr__(self, name: str) -> Callable[..., Deferred[Any]]:
        method = getattr(self._manager_type, name, None)
        if name.startswith("_") or not callable(method):
            raise AttributeError(f"{self._manager_type.__name__} has no DDI method {name!r}")

        def deferred_call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            return self._record(method, args, kwargs)

        return deferred_call

    def _record(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Deferred[Any]:
        deferred: Deferred[Any] = Deferred(f"{method.__name__}{args!r}")
        try:
            result = method(self._recording, *args, **kwargs)
        except _Recorded as recorded:
            self._calls.append(_Call(method, args, kwargs, recorded, deferred))
        else:
            deferred._settle(result, None)  # answered without the agent (e.g. argument checks only)
        return deferred

    def run(self) -> None:
        """Send every recorded call in as few round trips as the channel allows and settle each."""
        calls, self._calls = self._calls, []
        if not calls:
            return
        responses = self._transport.request_batch([(c.recorded.command, c.recorded.args) for c in calls],
                                                  timeout=self._timeout)
        for call, response in zip(calls, responses, strict=True):
            self._replayer.expect(call.recorded.command, response)
            try:
                call.deferred._settle(call.method(self._replaying, *call.args, **call.kwargs), None)
            except (MmhilError, ValueError) as exc:
                call.deferred._settle(None, exc)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.run()
