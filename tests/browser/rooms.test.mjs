// Two headless Chromium pages open the rooms page and join one room: both
// list both members, a message reaches both exactly once, a page whose
// socket drops gets back what it missed (and nothing twice), and HTML in a
// message is shown as text.
//
// Run through scripts/browser-test.sh, which builds the example and sets
// ROOMS_BIN. Uses Debian's /usr/bin/chromium, never a downloaded browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHROMIUM, LIMIT_MS, launch, startServer } from './support.mjs';

const ROOMS_BIN = process.env.ROOMS_BIN;

/** Texts of the log items of one class on a page. */
const texts = (page, cls) => page.$$eval(`#log li.${cls}`, (lis) => lis.map((li) => li.textContent));

/** Names in the members list, as shown. */
const members = (page) => page.$$eval('#members li', (lis) => lis.map((li) => li.textContent));

/** How many log items of a class have exactly this text. */
const count = async (page, cls, text) => (await texts(page, cls)).filter((t) => t === text).length;

async function enter(page, room, name) {
  await page.fill('#room', room);
  await page.fill('#name', name);
  await page.click('#join');
  await page.waitForSelector('#status.open');
}

async function say(page, text) {
  await page.fill('#msg', text);
  await page.press('#msg', 'Enter');
}

async function waitForText(page, cls, text, times = 1) {
  await page.waitForFunction(
    ([cls, text, times]) =>
      [...document.querySelectorAll(`#log li.${cls}`)].filter((li) => li.textContent === text).length >= times,
    [cls, text, times],
    { timeout: LIMIT_MS },
  );
}

async function waitForMembers(page, names) {
  await page.waitForFunction(
    (names) => JSON.stringify([...document.querySelectorAll('#members li')].map((li) => li.textContent)) === names,
    JSON.stringify(names),
    { timeout: LIMIT_MS },
  );
}

test('rooms example: members, messages, recovery after a dropped socket, HTML as text', async () => {
  assert.ok(ROOMS_BIN && existsSync(ROOMS_BIN), `ROOMS_BIN must name the built rooms example (got ${ROOMS_BIN})`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium`);

  const rooms = startServer('rooms', ROOMS_BIN, ['--ws', '127.0.0.1:0', '--tcp', 'off']);
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  let context;
  try {
    const url = await rooms.url;
    context = await launch(userDataDir);
    const ada = await context.newPage();
    const bob = await context.newPage();
    const dialogs = [];
    for (const page of [ada, bob]) {
      page.setDefaultTimeout(LIMIT_MS);
      page.on('dialog', (dialog) => {
        dialogs.push(dialog.message());
        dialog.dismiss().catch(() => {});
      });
      await page.goto(url);
    }

    // 1. Both join; each lists both, ada is told bob joined, bob is not
    // told about himself.
    await enter(ada, 'lobby', 'ada');
    await enter(bob, 'lobby', 'bob');
    await waitForMembers(ada, ['ada', 'bob']);
    await waitForMembers(bob, ['ada', 'bob']);
    await waitForText(ada, 'join', 'bob joined');
    assert.deepEqual(await texts(ada, 'join'), ['bob joined']);
    assert.deepEqual(await texts(bob, 'join'), [], 'bob is not told that he joined');

    // 2. A message reaches both pages, the sender included.
    await say(ada, 'hello');
    await waitForText(ada, 'message', 'ada: hello');
    await waitForText(bob, 'message', 'ada: hello');
    assert.equal(await count(ada, 'message', 'ada: hello'), 1);
    assert.equal(await count(bob, 'message', 'ada: hello'), 1);

    // 3. Bob's socket drops. His page is paused so that it cannot reconnect
    // before ada has spoken, whatever its backoff.
    await bob.evaluate(() => {
      window.rooms.pause();
      window.rooms.drop();
    });
    await bob.waitForFunction(
      () => window.rooms.state.socket.readyState === WebSocket.CLOSED && /reconnecting/.test(document.getElementById('status').textContent),
      null,
      { timeout: LIMIT_MS },
    );
    // The server has seen him go.
    await waitForText(ada, 'leave', 'bob left');
    await waitForMembers(ada, ['ada']);

    await say(ada, 'while you were away 1');
    await say(ada, 'while you were away 2');
    await waitForText(ada, 'message', 'ada: while you were away 1');
    await waitForText(ada, 'message', 'ada: while you were away 2');
    assert.equal(await count(bob, 'message', 'ada: while you were away 1'), 0, 'bob was away');

    await bob.evaluate(() => window.rooms.resume());
    await bob.waitForSelector('#status.open');
    await waitForText(bob, 'recovery', 'recovered 2 messages');
    await waitForText(bob, 'message', 'ada: while you were away 2');
    await waitForText(ada, 'join', 'bob joined', 2);
    await waitForMembers(ada, ['ada', 'bob']);
    await waitForMembers(bob, ['ada', 'bob']);

    // 4. HTML in a message is text. It also comes after everything above
    // on each connection, so any duplicate would already be in.
    const html = '<img src=x onerror=alert(1)>';
    await say(ada, html);
    await waitForText(bob, 'message', `ada: ${html}`);
    await waitForText(ada, 'message', `ada: ${html}`);
    for (const page of [ada, bob]) {
      assert.equal(await page.locator('#log img').count(), 0, 'no img element in the log');
      assert.equal(await page.locator('img').count(), 0, 'no img element anywhere');
    }
    assert.deepEqual(dialogs, [], 'no script from a message ran');

    const said = ['ada: hello', 'ada: while you were away 1', 'ada: while you were away 2', `ada: ${html}`];
    assert.deepEqual(await texts(bob, 'message'), said, 'bob sees each message once, in order');
    assert.deepEqual(await texts(ada, 'message'), said, 'ada sees each message once, in order');
    assert.deepEqual(await texts(bob, 'recovery'), ['recovered 2 messages']);
    assert.deepEqual(await texts(ada, 'recovery'), [], 'ada never reconnected');
    assert.deepEqual(await texts(ada, 'join'), ['bob joined', 'bob joined'], 'old connection left, new one joined');
    assert.deepEqual(await texts(ada, 'leave'), ['bob left']);
    assert.deepEqual(await texts(bob, 'join'), [], 'bob is not told that he joined');
    assert.deepEqual(await texts(bob, 'leave'), [], 'bob is not told that his old connection left');
    assert.deepEqual(await texts(ada, 'error'), []);
    assert.deepEqual(await texts(bob, 'error'), []);
    assert.deepEqual(await members(ada), ['ada', 'bob']);
    assert.deepEqual(await members(bob), ['ada', 'bob']);
  } finally {
    if (context) await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
    rooms.child.kill('SIGINT');
  }

  // Ctrl-C stops the server cleanly.
  const timer = setTimeout(() => rooms.child.kill('SIGKILL'), LIMIT_MS);
  const { code, signal } = await rooms.exited;
  clearTimeout(timer);
  assert.equal(signal, null, 'rooms ignored SIGINT');
  assert.equal(code, 0, 'rooms exit code');
  assert.match(rooms.output(), /shutting down/);
});
