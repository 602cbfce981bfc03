"""The event loop the server runs on: `uvicorn app.main:app --loop app.runtime.loop:new_event_loop`.

asyncio's own loop, which serves every connection in turn under full load (uvloop left
some unanswered for seconds), with TCP_NODELAY on every accepted connection: with
`--workers` uvicorn binds the socket itself, and asyncio would set none. Figures in
docs/performance.md.
"""

import asyncio
import os
import socket
from typing import Any


class EventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, with TCP_NODELAY on every TCP connection it accepts."""

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        sock = kwargs.get("sock")
        if (
            isinstance(sock, socket.socket)
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.proto != socket.IPPROTO_TCP
        ):
            # The same listening socket (a duplicate descriptor), now saying what it is, so
            # that the connections it accepts get TCP_NODELAY.
            kwargs["sock"] = socket.socket(
                sock.family, sock.type, socket.IPPROTO_TCP, os.dup(sock.fileno())
            )
        return await super().create_server(*args, **kwargs)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return EventLoop()
