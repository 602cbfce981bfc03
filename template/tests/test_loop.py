"""The server's event loop (app/runtime/loop.py)."""

import asyncio
import socket

from app.runtime.loop import new_event_loop


async def nodelay_of_an_accepted_connection() -> int:
    # Bound as uvicorn binds it for --workers: `proto` 0.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = writer.get_extra_info("socket")
        accepted.set_result(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    try:
        _, client = await asyncio.open_connection("127.0.0.1", port)
        nodelay = await asyncio.wait_for(accepted, timeout=10)
        client.close()
    finally:
        server.close()
        listener.close()
    return nodelay


def test_connections_on_a_socket_bound_with_proto_0_get_tcp_nodelay() -> None:
    """Without TCP_NODELAY every response waits for the client's delayed ACK (~40 ms)."""
    loop = new_event_loop()
    try:
        assert loop.run_until_complete(nodelay_of_an_accepted_connection()) != 0
    finally:
        loop.close()
