"""uvicorn's h11 protocol with the deadlines a server on a network needs, and a graceful stop that a slow
client cannot hold up.

uvicorn bounds idle keep-alive connections and the size of a request head, but not the time a
client may take to send its head or its body: one byte every few seconds would hold a connection
(and a SIGTERM drain) for as long as the client likes. Here a request's head must be complete
within `header_timeout` seconds of its first byte (or of the connection, for a client that sends
nothing), and its body within `body_timeout` seconds of the head; past that the connection is
closed. On shutdown, a connection still sending its request is closed at once: only requests
already being answered are drained.
"""

from __future__ import annotations

import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("zdiff.serve")


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport) -> None:
        self._deadline, self._phase, self._head_bytes = None, None, 0
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            return
        super().data_received(data)
        self._arm()

    def _head_too_large(self, data: bytes) -> bool:
        """h11 bounds only a head that arrives in pieces; a whole one in a single read is bounded here."""
        end = data.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else end + 4
        limit = self.config.h11_max_incomplete_event_size or h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if self._head_bytes <= limit:
            if end >= 0:
                self._head_bytes = 0  # the next request on this connection counts afresh
            return False
        body = b'{"error": {"message": "request head larger than %d bytes", "type": "invalid_request_error"}}' % limit
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # still uploading: nothing to drain, only a client to wait for
            self._expire("body (the server is shutting down)")
            return
        super().shutdown()

    def _arm(self) -> None:
        """The deadline of the phase the client is in: sending a head (IDLE), a body (SEND_BODY), or none."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return  # a deadline runs from the phase's start, not from the latest byte
        self._disarm()
        self._phase = phase
        if phase is not None and not self.transport.is_closing():
            limit = self.header_timeout if phase == "headers" else self.body_timeout
            self._deadline = self.loop.call_later(limit, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        log.warning("closing the connection of %s: request %s not complete in time", client, phase)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()  # the app reading the body sees the client gone
        self.transport.close()


def guarded_protocol(header_timeout: float, body_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these deadlines."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "body_timeout": body_timeout})
