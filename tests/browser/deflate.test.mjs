// permessage-deflate between headless Chromium and the echo example (started
// with --deflate): the page's WebSocket agrees on the extension, and text and
// 1 MiB binary messages come back byte for byte. The page connects through a
// byte-counting TCP relay on 127.0.0.1, so that the test also sees that both
// sides compressed: a compressible megabyte crosses the socket in a few KiB
// each way, and the echo's threshold (256 bytes) holds.
//
// Run through scripts/browser-test.sh, which builds the echo example and sets
// ECHO_BIN. Uses Debian's /usr/bin/chromium, never a downloaded browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHROMIUM, LIMIT_MS, launch } from './support.mjs';

const ECHO_BIN = process.env.ECHO_BIN;
const MIB = 1 << 20;

/** Starts the echo example; `addr` resolves with the host:port it prints. */
function startEcho() {
  const args = ['--ws', '127.0.0.1:0', '--tcp', 'off', '--max-message-size', String(16 * MIB), '--deflate'];
  const child = spawn(ECHO_BIN, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const addr = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`echo printed no URL: ${out}`)), LIMIT_MS);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/ws:\/\/(127\.0\.0\.1:\d+)\//);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`echo exited early (${code}): ${out}`)));
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, addr, exited, output: () => out };
}

/**
 * A TCP relay on 127.0.0.1:0 to `target` (host:port) that counts the bytes
 * going up (browser to server) and down.
 */
async function countingRelay(target) {
  const [host, port] = target.split(':');
  const counts = { up: 0, down: 0, connections: 0 };
  const sockets = new Set();
  const server = createServer((client) => {
    counts.connections += 1;
    const upstream = connect(Number(port), host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (chunk) => { counts.up += chunk.length; });
    upstream.on('data', (chunk) => { counts.down += chunk.length; });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const close = () => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(resolve));
  };
  return { counts, addr: `127.0.0.1:${server.address().port}`, close };
}

/**
 * An empty page on 127.0.0.1:0: Chromium lets a page reach a loopback
 * address only from a loopback origin (local network access checks), so
 * about:blank and data: URLs cannot open the socket.
 */
async function pageServer() {
  const server = createHttpServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><meta charset="utf-8"><title>deflate</title>');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return { url: `http://127.0.0.1:${server.address().port}/`, close };
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

// Runs in the page: opens the socket, keeps it as window.ws.
async function openSocket(url) {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`cannot open ${url}`));
  });
  window.ws = ws;
  return { extensions: ws.extensions, protocol: ws.protocol };
}

// Runs in the page: sends one message (text as given, or `size` binary
// bytes, `pattern` or `random`), waits for the echo and compares.
async function echoOnce([text, binary]) {
  let payload = text;
  let sent;
  if (binary) {
    const bytes = new Uint8Array(binary.size);
    if (binary.kind === 'pattern') {
      for (let i = 0; i < bytes.length; i++) bytes[i] = i % 256;
    } else {
      // getRandomValues fills at most 64 KiB a call.
      for (let off = 0; off < bytes.length; off += 65536) {
        crypto.getRandomValues(bytes.subarray(off, off + 65536));
      }
    }
    payload = bytes.buffer;
    sent = bytes;
  } else {
    sent = new TextEncoder().encode(text);
  }
  const echo = await new Promise((resolve, reject) => {
    window.ws.onmessage = (event) => resolve(event.data);
    window.ws.onclose = (event) => reject(new Error(`closed (${event.code}) before the echo`));
    window.ws.send(payload);
  });
  const isText = typeof echo === 'string';
  const got = isText ? new TextEncoder().encode(echo) : new Uint8Array(echo);
  let same = got.length === sent.length;
  for (let i = 0; same && i < got.length; i++) same = got[i] === sent[i];
  return { isText, length: got.length, sentLength: sent.length, same: same && (!isText || echo === text) };
}

test('chromium agrees permessage-deflate with the echo example; text and 1 MiB binary round-trip', async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium`);
  assert.ok(ECHO_BIN && existsSync(ECHO_BIN), `ECHO_BIN must name the built echo example (got ${ECHO_BIN})`);

  const echo = startEcho();
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  let context;
  let relay;
  let site;
  try {
    relay = await countingRelay(await echo.addr);
    site = await pageServer();
    context = await launch(userDataDir);
    const page = await context.newPage();
    page.setDefaultTimeout(LIMIT_MS);
    // The echo example accepts any Origin: the page's is http://127.0.0.1:PORT.
    await page.goto(site.url);
    const opened = await page.evaluate(openSocket, `ws://${relay.addr}/deflate`);
    assert.equal(opened.extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    assert.equal(relay.counts.connections, 1);

    const cases = [
      // [name, text or null, binary or null, the server compresses it, at most this many bytes each way]
      ['short text', 'hello', null, false],
      ['255 bytes, under the threshold', 'a'.repeat(255), null, false],
      ['256 bytes, at the threshold', 'a'.repeat(256), null, true, 64],
      ['JSON text', jsonText(16 * 1024), null, true, 16 * 1024 / 5],
      ['non-ASCII text', 'żółw 🐢 '.repeat(200), null, true, 512],
      ['1 MiB binary, compressible', null, { kind: 'pattern', size: MIB }, true, MIB / 50],
      ['1 MiB binary, random', null, { kind: 'random', size: MIB }, null],
    ];
    for (const [name, text, binary, compressed, atMost] of cases) {
      const before = { ...relay.counts };
      const result = await page.evaluate(echoOnce, [text, binary]);
      const up = relay.counts.up - before.up;
      const down = relay.counts.down - before.down;
      assert.equal(result.isText, text !== null, `${name}: text comes back as text, binary as binary`);
      assert.equal(result.length, result.sentLength, `${name}: length`);
      assert.ok(result.same, `${name}: the echo differs`);
      if (compressed === false) {
        assert.ok(down >= result.sentLength, `${name}: sent as is, yet only ${down} bytes arrived`);
      }
      if (compressed === true) {
        // Chromium compresses what it sends; the server inflated it.
        assert.ok(up <= atMost, `${name}: ${up} bytes went up for ${result.sentLength}`);
        assert.ok(down <= atMost, `${name}: ${down} bytes came down for ${result.sentLength}`);
      }
      console.log(`  ${name}: ${result.sentLength} bytes, ${up} up and ${down} down on the wire`);
    }

    const closed = await page.evaluate(() => new Promise((resolve) => {
      window.ws.onclose = (event) => resolve(event.code);
      window.ws.close(1000);
    }));
    assert.equal(closed, 1000);
  } finally {
    if (context) await context.close();
    if (relay) await relay.close();
    if (site) await site.close();
    rmSync(userDataDir, { recursive: true, force: true });
    echo.child.kill('SIGINT');
  }

  // Ctrl-C stops the server cleanly.
  const timer = setTimeout(() => echo.child.kill('SIGKILL'), LIMIT_MS);
  const { code, signal } = await echo.exited;
  clearTimeout(timer);
  assert.equal(signal, null, 'echo ignored SIGINT');
  assert.equal(code, 0, 'echo exit code');
  assert.match(echo.output(), /shutting down/);
});
