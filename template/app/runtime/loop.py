"""The event loop the server runs on: `uvicorn app.main:app --loop app.runtime.loop:new_event_loop`.

asyncio's own loop, for two measured reasons (docs/benchmarks.md in the template):
- under full load uvloop left some connections unanswered for seconds, while asyncio's
  loop serves every connection in turn;
- asyncio sets TCP_NODELAY only on connections whose socket says `proto` IPPROTO_TCP.
  With `--workers`, uvicorn binds the listening socket itself with `proto` 0, so every
  response waited for the client's delayed ACK, about 40 ms. This loop fixes that.
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
