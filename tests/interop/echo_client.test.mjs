// Node's ws, as a client with perMessageDeflate, against the echo example
// started with --deflate (ECHO_URL, set by scripts/interop.sh): the
// extension is agreed as documented, every echo is byte-identical, and the
// bytes that cross the socket show what the server compressed (from the
// threshold, 256 bytes, on; not below it).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';

const URL = process.env.ECHO_URL;
const LIMIT_MS = 30_000;
const MIB = 1 << 20;

/** Resolves with `promise`, or fails after LIMIT_MS. */
function bounded(promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${LIMIT_MS} ms`)), LIMIT_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** The next message as { data, isBinary }. */
function nextMessage(ws) {
  return new Promise((resolve, reject) => {
    const onMessage = (data, isBinary) => {
      ws.off('close', onClose);
      resolve({ data, isBinary });
    };
    const onClose = (code, reason) => {
      ws.off('message', onMessage);
      reject(new Error(`closed (${code} ${reason}) before the echo`));
    };
    ws.once('message', onMessage);
    ws.once('close', onClose);
  });
}

function jsonText(size) {
  const rows = [];
  for (let n = 0, len = 0; len < size; n++) {
    const row = JSON.stringify({ id: n, user: `user${n % 7}`, text: 'hello, room' });
    rows.push(row);
    len += row.length;
  }
  return `[${rows.join(',')}]`;
}

test('ws with perMessageDeflate: deflate is agreed and every echo is identical', async () => {
  assert.ok(URL, "ECHO_URL must name the echo example's ws:// URL (scripts/interop.sh sets it)");
  const ws = new WebSocket(URL, { perMessageDeflate: true, maxPayload: 16 * MIB });
  let socket;
  let answer;
  ws.on('upgrade', (res) => {
    socket = res.socket;
    answer = res.headers['sec-websocket-extensions'];
  });
  await bounded(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  }), 'open');
  try {
    assert.equal(ws.extensions, 'permessage-deflate');
    assert.equal(answer, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    assert.ok(socket && typeof socket.bytesRead === 'number', 'the upgraded socket');

    const compressible = Buffer.alloc(MIB);
    for (let i = 0; i < MIB; i++) compressible[i] = i % 256;
    const cases = [
      // [name, payload, the server compresses it (wire bytes tell), at most this many wire bytes]
      ['short text', 'hello', false],
      ['255 bytes, under the threshold', 'a'.repeat(255), false],
      ['256 bytes, at the threshold', 'a'.repeat(256), true, 64],
      ['JSON text', jsonText(16 * 1024), true, 16 * 1024 / 5],
      ['non-ASCII text', 'żółw 🐢 '.repeat(200), true, 512],
      ['1 MiB binary, compressible', compressible, true, MIB / 50],
      ['1 MiB binary, random', randomBytes(MIB), null],
    ];
    for (const [name, payload, compressed, atMost] of cases) {
      const binary = Buffer.isBuffer(payload);
      const bytes = binary ? payload : Buffer.from(payload, 'utf8');
      const [readBefore, writtenBefore] = [socket.bytesRead, socket.bytesWritten];
      const echoed = nextMessage(ws);
      ws.send(payload, { binary });
      const { data, isBinary } = await bounded(echoed, name);
      // Frame headers (2 to 10 bytes) and nothing else arrived meanwhile.
      const wire = socket.bytesRead - readBefore;
      const written = socket.bytesWritten - writtenBefore;
      assert.equal(isBinary, binary, `${name}: text comes back as text, binary as binary`);
      assert.equal(data.length, bytes.length, `${name}: length`);
      assert.ok(Buffer.compare(data, bytes) === 0, `${name}: the echo differs`);
      if (compressed === false) {
        assert.ok(wire >= bytes.length, `${name}: sent as is, yet only ${wire} bytes arrived`);
      }
      if (compressed === true) {
        assert.ok(wire <= atMost, `${name}: ${wire} bytes arrived for ${bytes.length}`);
        // ws compresses from 1024 bytes on: the server inflated it.
        if (bytes.length >= 1024) {
          assert.ok(written <= atMost, `${name}: ${written} bytes sent for ${bytes.length}`);
        }
      }
      console.log(`  ${name}: ${bytes.length} bytes, sent in ${written} and echoed in ${wire} bytes on the wire`);
    }
  } finally {
    const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
    ws.close(1000);
    assert.equal(await bounded(closed, 'close'), 1000);
  }
});
