"""A Python websockets echo server with permessage-deflate, for the Rust
client's interop test (tests/interop_python.rs).

    python echo_server.py [--keep-context]

Listens on 127.0.0.1, on a port the system picks, and prints
`echo_server: listening on ws://127.0.0.1:PORT/`. Echoes every message,
except the text "extensions?", which it answers with a JSON report of the
connection: the offer (`offered`), the `Sec-WebSocket-Extensions` answer
(`agreed`), whether each side keeps its compression context, and per data
message so far `received` and `sent` as [compressed, wire bytes].

The extension settings are websockets' defaults (window bits 12). With
--keep-context, offers that ask the server for server_no_context_takeover
are declined, so a client that offers an alternative gets one where the
server compresses each message with the context of the previous ones.

Stops when its standard input closes, on SIGINT or SIGTERM, or after
--lifetime seconds (120 by default), whichever comes first.
"""

import argparse
import asyncio
import json
import signal
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import NegotiationError

from wire import MAX_SIZE, RecordingServerFactory, server_factory


class KeepContextFactory(RecordingServerFactory):
    """websockets honours server_no_context_takeover whenever a client asks
    for it; this factory declines such an offer instead, so that the next
    offer (if any) is taken."""

    def process_request_params(self, params, accepted_extensions):
        if any(name == "server_no_context_takeover" for name, _ in params):
            raise NegotiationError("this server keeps its compression context")
        return super().process_request_params(params, accepted_extensions)


def report(ws):
    ext = next(iter(ws.protocol.extensions), None)
    return {
        "offered": ws.request.headers.get_all("Sec-WebSocket-Extensions"),
        "agreed": ws.response.headers.get("Sec-WebSocket-Extensions"),
        "server_keeps_context": None if ext is None else not ext.local_no_context_takeover,
        "client_keeps_context": None if ext is None else not ext.remote_no_context_takeover,
        "received": None if ext is None else ext.received,
        "sent": None if ext is None else ext.sent,
    }


async def handler(ws):
    async for msg in ws:
        if msg == "extensions?":
            await ws.send(json.dumps(report(ws)))
        else:
            await ws.send(msg)


async def stdin_closed():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep-context", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120)
    args = parser.parse_args()
    factory = server_factory(KeepContextFactory if args.keep_context else RecordingServerFactory)

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, "127.0.0.1", 0, extensions=[factory], max_size=MAX_SIZE) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"echo_server: listening on ws://127.0.0.1:{port}/", flush=True)
        waits = [stop, asyncio.ensure_future(stdin_closed())]
        await asyncio.wait(waits, timeout=args.lifetime, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    print("echo_server: stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
