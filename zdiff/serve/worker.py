"""The engine loop: one thread owns the Engine (it is not thread-safe) and drives every request.

HTTP handlers run on the asyncio event loop. They `submit` a request and read its updates
from a per-request mailbox; `cancel` asks for its slot back. Both only put a command into
the worker's inbox, so the engine is touched by the worker thread alone. Between two engine
steps the worker takes every command waiting (new requests join free slots at the next
step: continuous batching; cancelled ones free theirs), then steps while there is work and
sleeps on the inbox when there is none.

Admission control lives here because it must be decided when the request arrives: at most
`max_slots + max_queue` requests are in flight; one more raises QueueFull (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ZdiffError
from ..generation.engine import Engine
from ..generation.requests import RequestParams, RequestResult, StepFailed

log = logging.getLogger("zdiff.serve")


class QueueFull(Exception):
    """Every slot is busy and the queue holds --max-queue requests."""


class EngineFailed(Exception):
    """The engine raised during a step; the server cannot decode any more."""


@dataclass
class Update:
    tokens: list[int]  # newly committed since the previous update
    finished: bool
    finish_reason: str | None
    result: RequestResult | None = None  # on the last update
    error: str | None = None  # why, when finish_reason is "error" (a failed engine step)


class Submission:
    """One request's mailbox: the worker thread posts, the request's coroutine reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.mailbox: asyncio.Queue = asyncio.Queue()
        self.request_id: int | None = None  # set by the worker when the engine accepts it

    def post(self, item: Update | Exception) -> None:
        if self.loop.is_closed():
            return  # a forced stop closed the event loop: nobody is waiting for this any more
        try:
            self.loop.call_soon_threadsafe(self.mailbox.put_nowait, item)
        except RuntimeError:  # closed between the check and the call
            pass

    async def accepted(self) -> None:
        """Returns once the engine took the request (validated, in a slot or queued); raises the
        ZdiffError it refused the request with, or EngineFailed."""
        item = await self.mailbox.get()
        if isinstance(item, Exception):
            raise item
        assert item is ACCEPTED, item

    async def next(self) -> Update:
        """The next update (raises EngineFailed if the engine died)."""
        item = await self.mailbox.get()
        if isinstance(item, Exception):
            raise item
        return item


_STOP = object()
ACCEPTED = object()


class EngineWorker:
    def __init__(self, engine: Engine, max_queue: int, on_step: Callable[[Engine], None] | None = None,
                 on_death: Callable[[str], None] | None = None):
        self.engine = engine
        self.on_death = on_death or (lambda message: None)  # the thread ended for good (the server should exit)
        self.capacity = engine.stats.max_slots + max_queue
        self.on_step = on_step or (lambda engine: None)
        self._inbox: queue.Queue = queue.Queue()
        self._live: dict[int, Submission] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self.failure: str | None = None
        self._stopping = False
        self._aborting = False
        self.step_failures = 0  # failed steps the engine recovered from
        self._thread = threading.Thread(target=self._main, name="zdiff-engine", daemon=True)

    # -- called from the event loop --------------------------------------------------------
    def start(self) -> None:
        self.on_step(self.engine)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is in flight, then end the thread."""
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    def abort(self, timeout: float = 30.0) -> bool:
        """End the thread after the step it is in, dropping what is in flight and posting nothing (the event
        loop may be gone): a forced stop. Whether the thread ended within `timeout` seconds."""
        self._aborting = True
        self._stopping = True
        self._inbox.put(_STOP)
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def dead(self) -> str | None:
        """Why the engine thread can serve no more requests, or None while it can."""
        if self.failure is not None:
            return self.failure
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping:
            return "the engine thread has stopped"
        return None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, prompt: list[int], params: RequestParams) -> Submission:
        if self.failure is not None:
            raise EngineFailed(self.failure)
        with self._lock:
            if self._in_flight >= self.capacity:
                raise QueueFull(f"{self._in_flight} requests in flight (slots + queue = {self.capacity})")
            self._in_flight += 1
        submission = Submission(asyncio.get_running_loop())
        self._inbox.put(("add", submission, prompt, params))
        return submission

    def cancel(self, submission: Submission) -> None:
        self._inbox.put(("cancel", submission))

    def cancel_all(self) -> None:
        """End every request in flight now (finish_reason "cancelled"): the end of a shutdown's drain."""
        self._inbox.put(("cancel_all",))

    # -- the worker thread -----------------------------------------------------------------
    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _take_commands(self, block: bool) -> None:
        """Apply every waiting command (waiting for one first when `block`)."""
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if command is _STOP:
                self._stopping = True
            elif command[0] == "add":
                _, submission, prompt, params = command
                try:
                    submission.request_id = self.engine.add(prompt, params)
                except ZdiffError as err:
                    self._release()
                    submission.post(err)
                    continue
                except Exception as exc:  # a bug in add() fails this request, not the thread
                    log.exception("engine.add failed")
                    self._release()
                    submission.post(EngineFailed(f"the engine could not take the request: {type(exc).__name__}: {exc}"))
                    continue
                self._live[submission.request_id] = submission
                submission.post(ACCEPTED)
            elif command[0] == "cancel_all":
                for request_id in list(self._live):
                    self.engine.cancel(request_id)
            elif command[1].request_id in self._live:  # "cancel"; a finished request has nothing to free
                self.engine.cancel(command[1].request_id)

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # whatever ends the thread early must not leave clients waiting forever
            log.exception("the engine thread failed")
            self._fail(f"the engine thread failed: {type(exc).__name__}: {exc}")
        if self.failure is not None:
            self.on_death(self.failure)

    def _run(self) -> None:
        while not self._aborting:
            self._take_commands(block=not self._stopping and not self.engine.has_work())
            if not self.engine.has_work():
                if self._stopping:
                    return  # drained
                continue
            try:
                events = self.engine.step()
            except StepFailed as failed:  # the requests in its slots end with an error, the others go on
                log.error("%s", failed, exc_info=failed.__cause__)
                self.step_failures += 1
                self._deliver(failed.events, error=str(failed))
                if not failed.recovered:
                    self._fail(str(failed))
                    return
                events = []
            except Exception as exc:  # a bug in the engine must not leave every client hanging
                log.exception("engine step failed")
                self._fail(f"the engine failed: {type(exc).__name__}: {exc}")
                return
            if self._aborting:
                return
            self._deliver(events)
            self.on_step(self.engine)

    def _deliver(self, events, error: str | None = None) -> None:
        for event in events:
            submission = self._live.get(event.request_id)
            if submission is None:
                continue
            update = Update(event.tokens, event.finished, event.finish_reason,
                            error=error if event.finish_reason == "error" else None)
            if event.finished:
                update.result = self.engine.result(event.request_id)
                del self._live[event.request_id]
                self._release()
            submission.post(update)

    def _fail(self, message: str) -> None:
        self.failure = message
        for submission in self._live.values():
            submission.post(EngineFailed(message))
            self._release()
        self._live.clear()
        while True:  # requests submitted but never added
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if command is not _STOP and command[0] == "add":
                command[1].post(EngineFailed(message))
                self._release()
