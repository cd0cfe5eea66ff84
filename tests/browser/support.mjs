// What the browser tests share: starting an example server on a free
// loopback port, and launching Debian's chromium (never a downloaded one).

import { spawn } from 'node:child_process';
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const LIMIT_MS = 20_000;

/**
 * Starts `bin` with `args`; `url` resolves with the http://127.0.0.1:PORT/
 * it prints, `exited` with its exit code and signal.
 */
export function startServer(name, bin, args) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const url = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} printed no URL: ${out}`)), LIMIT_MS);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    });
    child.on('exit', (code) => reject(new Error(`${name} exited early (${code}): ${out}`)));
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, url, exited, output: () => out };
}

/** A headless chromium with its profile in `userDataDir`. */
export function launch(userDataDir) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: LIMIT_MS,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
