// Two headless Chromium pages open the chat page; a message typed in one
// must appear in the other exactly once, and only once (as sent) in the first.
// The same test runs against the chat example and against the axum_app
// example, which serves the same page and room through axum.
//
// Run through scripts/browser-test.sh, which builds the examples and sets
// CHAT_BIN and AXUM_APP_BIN. Uses Debian's /usr/bin/chromium, never a
// downloaded browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHROMIUM, LIMIT_MS, launch, startServer } from './support.mjs';

const CHAT_BIN = process.env.CHAT_BIN;
const AXUM_APP_BIN = process.env.AXUM_APP_BIN;

/** Texts of the list items of one class on a page. */
const texts = (page, cls) => page.$$eval(`#log li.${cls}`, (lis) => lis.map((li) => li.textContent));

async function say(page, text) {
  await page.fill('#msg', text);
  await page.press('#msg', 'Enter');
}

async function waitForText(page, cls, text) {
  await page.waitForFunction(
    ([cls, text]) => [...document.querySelectorAll(`#log li.${cls}`)].some((li) => li.textContent === text),
    [cls, text],
    { timeout: LIMIT_MS },
  );
}

async function twoPages(bin, args) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium`);

  const chat = startServer('chat', bin, args);
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  let context;
  try {
    const url = await chat.url;
    context = await launch(userDataDir);
    const alice = await context.newPage();
    const bob = await context.newPage();
    for (const page of [alice, bob]) {
      page.setDefaultTimeout(LIMIT_MS);
      await page.goto(url);
      await page.waitForSelector('#status.open');
    }

    // Bob speaks first: the server reads his message only after his on_open
    // (which joins the room), so once alice has it both are in the room.
    const first = 'bob is here ' + Date.now();
    await say(bob, first);
    await waitForText(alice, 'them', first);

    const hello = 'hello from alice ' + Date.now();
    await say(alice, hello);
    await waitForText(bob, 'them', hello);

    // A second message from alice: delivery is ordered, so once it is in,
    // any duplicate of the first would have arrived before it.
    const marker = 'marker ' + Date.now();
    await say(alice, marker);
    await waitForText(bob, 'them', marker);
    // And bob again, so anything the server sent alice before it is in too.
    const reply = 'reply from bob ' + Date.now();
    await say(bob, reply);
    await waitForText(alice, 'them', reply);

    assert.deepEqual(await texts(bob, 'them'), [hello, marker], 'bob sees each of alice\'s messages once');
    assert.deepEqual(await texts(alice, 'me'), [hello, marker], 'alice lists what she sent once');
    assert.deepEqual(await texts(alice, 'them'), [first, reply], 'alice is not sent her own messages back');
    assert.deepEqual(await texts(bob, 'me'), [first, reply]);
  } finally {
    if (context) await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
    chat.child.kill('SIGINT');
  }

  // Ctrl-C stops the server cleanly.
  const timer = setTimeout(() => chat.child.kill('SIGKILL'), LIMIT_MS);
  const { code, signal } = await chat.exited;
  clearTimeout(timer);
  assert.equal(signal, null, 'chat ignored SIGINT');
  assert.equal(code, 0, 'chat exit code');
  assert.match(chat.output(), /shutting down/);
}

test('chat example: a message typed in one page appears in the other exactly once', async () => {
  assert.ok(CHAT_BIN && existsSync(CHAT_BIN), `CHAT_BIN must name the built chat example (got ${CHAT_BIN})`);
  await twoPages(CHAT_BIN, ['--ws', '127.0.0.1:0', '--tcp', '127.0.0.1:0']);
});

test('axum_app example: the same page and room through axum', async () => {
  assert.ok(AXUM_APP_BIN && existsSync(AXUM_APP_BIN), `AXUM_APP_BIN must name the built axum_app example (got ${AXUM_APP_BIN})`);
  await twoPages(AXUM_APP_BIN, ['--addr', '127.0.0.1:0']);
});
