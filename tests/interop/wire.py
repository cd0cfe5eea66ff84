"""What the interop checks need to see on the wire: websockets'
permessage-deflate extension, recording for each data message whether it
was compressed (RSV1) and how many payload bytes crossed the socket.

websockets builds its extension objects inside its factories; the
factories here build the same objects (same negotiated parameters) as
`Recording` ones, so the negotiation itself is websockets' own.
"""

from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CONT, CTRL_OPCODES

MIB = 1 << 20
# Room for a 1 MiB message, compressed or not (random bytes grow a little).
MAX_SIZE = 16 * MIB


class Recording(PerMessageDeflate):
    """permessage-deflate that records every data message it passes:
    `received` and `sent` hold [compressed, wire_bytes] per message, in
    order, where wire_bytes sums the payloads of the message's frames as
    they are on the socket."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = []
        self.sent = []

    @classmethod
    def like(cls, ext):
        return cls(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
            ext.compress_settings,
        )

    @staticmethod
    def _note(log, frame):
        if frame.opcode in CTRL_OPCODES:
            return
        if frame.opcode is CONT:
            log[-1][1] += len(frame.data)
        else:
            log.append([bool(frame.rsv1), len(frame.data)])

    def decode(self, frame, *, max_size=None):
        self._note(self.received, frame)
        return super().decode(frame, max_size=max_size)

    def encode(self, frame):
        frame = super().encode(frame)
        self._note(self.sent, frame)
        return frame


class RecordingClientFactory(ClientPerMessageDeflateFactory):
    def process_response_params(self, params, accepted_extensions):
        ext = super().process_response_params(params, accepted_extensions)
        return Recording.like(ext)


class RecordingServerFactory(ServerPerMessageDeflateFactory):
    def process_request_params(self, params, accepted_extensions):
        response, ext = super().process_request_params(params, accepted_extensions)
        return response, Recording.like(ext)


def client_factory():
    """websockets' default client offer (`enable_client_permessage_deflate`):
    `permessage-deflate; client_max_window_bits`, recording."""
    return RecordingClientFactory(compress_settings={"memLevel": 5})


def server_factory(cls=RecordingServerFactory):
    """websockets' default server settings
    (`enable_server_permessage_deflate`), recording."""
    return cls(
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )


def parse_extensions(value):
    """`Sec-WebSocket-Extensions` as [(name, {param: value or None})]."""
    result = []
    for element in (value or "").split(","):
        parts = [p.strip() for p in element.split(";")]
        if not parts[0]:
            continue
        params = {}
        for p in parts[1:]:
            key, _, val = p.partition("=")
            params[key.strip()] = val.strip().strip('"') or None
        result.append((parts[0], params))
    return result
