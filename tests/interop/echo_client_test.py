"""Python websockets, as a client with its default permessage-deflate offer,
against the echo example started with --deflate (ECHO_URL, set by
scripts/interop.sh): the extension is agreed as documented, every echo is
byte-identical, and what the server sends is compressed from the
threshold (256 bytes) on and not below it.
"""

import asyncio
import json
import os
import random
import unittest

from websockets.asyncio.client import connect

from wire import MAX_SIZE, MIB, Recording, client_factory, parse_extensions

LIMIT = 30  # seconds for any one step

URL = os.environ.get("ECHO_URL")


def json_text(size):
    """Chat-like JSON, about `size` bytes: repetitive, as real traffic is."""
    rows = []
    n = 0
    while sum(len(r) for r in rows) < size:
        rows.append(json.dumps({"id": n, "user": f"user{n % 7}", "text": "hello, room"}))
        n += 1
    return "[" + ",".join(rows) + "]"


class EchoServer(unittest.TestCase):
    def test_deflate_is_agreed_and_every_echo_is_identical(self):
        self.assertTrue(URL, "ECHO_URL must name the echo example's ws:// URL (scripts/interop.sh sets it)")
        asyncio.run(self.run_client())

    async def run_client(self):
        async with asyncio.timeout(LIMIT):
            ws = await connect(URL, extensions=[client_factory()], max_size=MAX_SIZE)
        try:
            await self.check(ws)
        finally:
            async with asyncio.timeout(LIMIT):
                await ws.close()
        self.assertEqual(ws.close_code, 1000, "the server's close code")

    async def check(self, ws):
        offered = ws.request.headers.get_all("Sec-WebSocket-Extensions")
        self.assertEqual(offered, ["permessage-deflate; client_max_window_bits"])
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
        self.assertEqual(
            parse_extensions(agreed),
            [("permessage-deflate", {"server_no_context_takeover": None, "client_no_context_takeover": None})],
            f"the 101 answered {agreed!r}",
        )
        [ext] = ws.protocol.extensions
        self.assertIsInstance(ext, Recording)
        self.assertTrue(ext.remote_no_context_takeover and ext.local_no_context_takeover)

        rng = random.Random(7692)
        cases = [
            # (name, payload, the server compresses it, at most this many wire bytes)
            ("short text", "hello", False, None),
            ("255 bytes, under the threshold", "a" * 255, False, None),
            ("256 bytes, at the threshold", "a" * 256, True, 32),
            ("JSON text", json_text(16 * 1024), True, 16 * 1024 // 5),
            ("non-ASCII text", "żółw 🐢 " * 200, True, 400),
            ("1 MiB binary, compressible", bytes(range(256)) * (MIB // 256), True, MIB // 50),
            ("1 MiB binary, random", rng.randbytes(MIB), None, None),
        ]
        for name, payload, compressed, at_most in cases:
            with self.subTest(name):
                async with asyncio.timeout(LIMIT):
                    await ws.send(payload)
                    echo = await ws.recv()
                self.assertIs(type(echo), type(payload), "text comes back as text, binary as binary")
                self.assertEqual(len(echo), len(payload))
                self.assertTrue(echo == payload, f"{name}: the echo differs")
                size = len(payload.encode() if isinstance(payload, str) else payload)
                was_compressed, wire = ext.received[-1]
                if compressed is not None:
                    self.assertEqual(was_compressed, compressed, f"{name}: RSV1 of the echo")
                if compressed is False:
                    self.assertEqual(wire, size)
                if at_most is not None:
                    self.assertLessEqual(wire, at_most, f"{name}: {wire} bytes on the wire")
                print(f"  {name}: {size} bytes, echoed in {wire} bytes "
                      f"({'compressed' if was_compressed else 'as is'})")
        # websockets compresses everything it sends: the server inflated
        # every message above.
        self.assertEqual(len(ext.sent), len(cases))
        self.assertTrue(all(compressed for compressed, _ in ext.sent))
        self.assertEqual(len(ext.received), len(cases))


if __name__ == "__main__":
    unittest.main(verbosity=2)
