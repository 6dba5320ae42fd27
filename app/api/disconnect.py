"""Noticing that the client of a request went away, so that its work stops.

uvicorn answers `receive()` with `http.disconnect` once the body is read and the connection
closes. A watcher task waits for that and cancels the request's reply stream: a request that
waits in the queue leaves it, one that reads its prompt or writes its reply is interrupted, for
streaming and non-streaming responses alike (a non-streaming response sends nothing until the
end, so nothing else would notice).
"""

from __future__ import annotations

import asyncio
import threading

from fastapi import Request

from tandem.runtime.engine import Failed, Finished, Queued, ReplyStream
from tandem.runtime.errors import Interrupted


class ClientWatch:
    def __init__(self, request: Request):
        self._receive = request.receive
        self._streams: list[ReplyStream] = []
        self.gone = threading.Event()  # readable from worker threads (a model load in progress)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                for stream in self._streams:
                    stream.cancel()
                return

    def attach(self, stream: ReplyStream) -> ReplyStream:
        self._streams.append(stream)
        if self.gone.is_set():
            stream.cancel()
        return stream

    def cancelled(self) -> bool:
        return self.gone.is_set()

    def close(self) -> None:
        self._task.cancel()

    def __enter__(self) -> "ClientWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def first_event(stream: ReplyStream, watch: ClientWatch):
    """The reply's first event past its wait for the model (Started, or Finished when it ended
    before it began); a failure is raised, and so is a client that left while it waited."""
    first = await stream.next_event()
    while isinstance(first, Queued):  # waiting for the model: the client may still leave
        first = await stream.next_event()
    if isinstance(first, Failed):
        raise first.error
    if isinstance(first, Finished) and first.finish_reason == "cancelled" and watch.cancelled():
        raise Interrupted("The client went away.")
    return first
