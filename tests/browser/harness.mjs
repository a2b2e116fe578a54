// Shared helpers: start the real relay binary, mint tokens, launch headless Chromium.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const bin = process.env.ROOMCAST_BIN || join(root, 'target', 'release', 'roomcast');

/** Starts `roomcast serve` on port 0; resolves with its addresses once it prints ready. */
export async function startRelay() {
  const dir = mkdtempSync(join(tmpdir(), 'roomcast-browser-'));
  const args = ['serve', '--http-listen', '127.0.0.1:0', '--webtransport-listen', '127.0.0.1:0',
    '--quic-listen', '127.0.0.1:0', '--data-dir', join(dir, 'data'), '--cert-dir', join(dir, 'certs'),
    '--web-dir', join(root, 'web')];
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const l = out.split('\n').find((x) => x.startsWith('roomcast ready'));
      if (l) resolve(l);
    });
    proc.on('exit', (code) => reject(new Error(`relay exited with ${code}`)));
    setTimeout(() => reject(new Error('relay did not become ready')), 15000);
  });
  const field = (k) => line.match(new RegExp(`${k}=(\\S+)`))[1];
  return {
    proc,
    dir,
    http: field('http').replace(/\/$/, ''),
    quic: field('quic'),
    certSha256: field('cert_sha256'),
    token: (room, identity, grants) => execFileSync(bin, ['token', '--data-dir', join(dir, 'data'),
      '--room', room, '--identity', identity, '--grants', grants, '--ttl', '10m']).toString().trim(),
    stop() {
      proc.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Publishes a synthetic stream with `roomcast publish`; returns the child process. */
export function publish(relay, room, identity, extra = []) {
  return spawn(bin, ['publish', '--url', relay.quic, '--cert-sha256', relay.certSha256,
    '--token', relay.token(room, identity, 'publish,subscribe'), '--room', room, '--identity', identity,
    ...extra], { stdio: ['ignore', 'inherit', 'inherit'] });
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
  });
}

/** Polls `fn` in the page until it returns truthy. */
export async function waitFor(page, fn, timeoutMs = 15000) {
  await page.waitForFunction(fn, null, { timeout: timeoutMs, polling: 100 });
}
