// Shared helpers: start the real relay binary, mint tokens, launch headless Chromium.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const bin = process.env.ROOMCAST_BIN || join(root, 'target', 'release', 'roomcast');

/** Runs `roomcast serve` with `args`; resolves with the process and its ready line. */
async function launch(args, { binary = bin, cwd } = {}) {
  const proc = spawn(binary, args, { stdio: ['ignore', 'pipe', 'inherit'], cwd });
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
  return { proc, line };
}

/**
 * Starts `roomcast serve` on port 0; resolves with its addresses once it prints ready. By
 * default it serves web/ of this checkout (`--web-dir`); `installed: { binary, cwd }` runs an
 * installed binary from `cwd` as a user would: its own web client, state under `cwd`.
 */
export async function startRelay({ webtransportListen = '127.0.0.1:0', extra = [], installed = null } = {}) {
  const dir = installed ? installed.cwd : mkdtempSync(join(tmpdir(), 'roomcast-browser-'));
  const own = installed ? [] : ['--data-dir', join(dir, 'data'), '--cert-dir', join(dir, 'certs'), '--web-dir', join(root, 'web')];
  const args = (http, wt, quic) => ['serve', '--http-listen', http, '--webtransport-listen', wt,
    '--quic-listen', quic, '--whip-listen', '127.0.0.1:0', ...own, ...extra];
  const { proc, line } = await launch(args('127.0.0.1:0', webtransportListen, '127.0.0.1:0'), installed ?? {});
  const field = (k) => line.match(new RegExp(`${k}=(\\S+)`))[1];
  const hostPort = (url) => url.replace(/^[a-z]+:\/\//, '').replace(/\/$/, '');
  return {
    proc,
    dir,
    http: field('http').replace(/\/$/, ''),
    quic: field('quic'),
    webtransport: field('webtransport').replace(/\/$/, ''),
    certSha256: field('cert_sha256'),
    token: (room, identity, grants) => execFileSync(bin, ['token', '--data-dir', join(dir, 'data'),
      '--room', room, '--identity', identity, '--grants', grants, '--ttl', '10m']).toString().trim(),
    /**
     * Stops the relay as an operator would (SIGTERM: GOAWAY, drain, exit) and starts it again
     * on the same ports, data and certificates. Resolves with the stopped process's runtime
     * of the drain in ms once the new one is ready.
     */
    async restart() {
      const started = Date.now();
      const exited = new Promise((resolve) => this.proc.once('exit', resolve));
      this.proc.kill('SIGTERM');
      await exited;
      const drained = Date.now() - started;
      const next = await launch(args(hostPort(this.http), hostPort(this.webtransport), hostPort(this.quic)), installed ?? {});
      this.proc = next.proc;
      return drained;
    },
    stop() {
      this.proc.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Publishes a synthetic stream with `roomcast publish`; returns the child process. */
export function publish(relay, room, identity, extra = []) {
  return spawn(bin, ['publish', '--url', relay.quic, '--cert-sha256', relay.certSha256,
    '--token', relay.token(room, identity, 'publish,subscribe'), '--room', room, '--identity', identity, '--synthetic',
    ...extra], { stdio: ['ignore', 'inherit', 'inherit'] });
}

/** The flags `roomcast publish` documents for ffmpeg's MP4 output (a fragment at least every
 * 100 ms, so audio-only streams flow too). */
export const CMAF = ['-f', 'mp4', '-movflags', 'cmaf+frag_keyframe+empty_moov+default_base_moof', '-frag_duration', '100000'];

/**
 * ffmpeg (`inputs` and encoder arguments, then CMAF to a pipe) into `roomcast publish` as
 * `identity` in `room`; `stop()` ends both.
 */
export function publishFfmpeg(relay, room, identity, ffmpegArgs) {
  const ffmpeg = spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-re', ...ffmpegArgs, ...CMAF, '-'],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const pub = spawn(bin, ['publish', '--url', relay.quic, '--cert-sha256', relay.certSha256,
    '--token', relay.token(room, identity, 'publish'), '-'], { stdio: [ffmpeg.stdout, 'inherit', 'inherit'] });
  return {
    ffmpeg,
    pub,
    stop() {
      ffmpeg.kill('SIGTERM');
      pub.kill('SIGTERM');
    },
  };
}

/** Decoded streams of an MP4 file as ffprobe counts them: [{ codec, width, height, frames }]. */
export function probe(file) {
  const out = execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-of', 'json', '-show_streams', file]);
  return JSON.parse(out.toString()).streams.map((s) => ({
    codec: s.codec_name, width: s.width, height: s.height, frames: Number(s.nb_read_frames || 0),
  }));
}

export async function launchBrowser(extraArgs = [], { env } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    ...(env ? { env: { ...process.env, ...env } } : {}),
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required', ...extraArgs],
  });
}

/** Polls `fn` in the page until it returns truthy. */
export async function waitFor(page, fn, timeoutMs = 15000, arg = null) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
  } catch (e) {
    const seen = await page.evaluate(() => JSON.stringify({
      status: window.roomcast?.state?.status, stats: window.roomcast?.stats?.(), error: document.getElementById('error')?.textContent,
      prejoin: document.getElementById('prejoin') ? !document.getElementById('prejoin').hidden : null,
    })).catch(() => 'page gone');
    throw new Error(`${e.message}\n  waiting for: ${fn}\n  page state: ${seen}`);
  }
}

/** Registers `username` (or, with `login`, logs in) through the lobby form of a fresh page. */
export async function signUp(browser, relay, username, { login = false } = {}) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.log(`[${username}] page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'warning' || m.type() === 'error') console.log(`[${username}] ${m.text()}`); });
  await page.goto(`${relay.http}/`);
  await page.fill('#username', username);
  await page.fill('#password', 'password123');
  await page.click(login ? '#auth button[type=submit]' : '#register');
  await page.waitForSelector('#rooms-panel:not([hidden])');
  return page;
}

/** Creates a room from the lobby; resolves with its id once connected. */
export async function createRoom(page, name, mode = 'meeting') {
  await page.fill('#room-name', name);
  await page.selectOption('#room-mode', mode);
  await page.click('#create button[type=submit]');
  await page.click('#prejoin-go');
  await waitFor(page, () => window.roomcast.state.status === 'connected');
  return page.textContent('#room-id');
}

export async function joinRoom(page, id) {
  await page.fill('#join-id', id);
  await page.click('#join button[type=submit]');
  await page.click('#prejoin-go');
  await waitFor(page, () => window.roomcast.state.status === 'connected');
}

/** Frames decoded from `who` on `page`. */
export async function frames(page, who) {
  return page.evaluate((w) => window.roomcast.stats().viewers[w]?.frames ?? 0, who);
}

/** Standard deviation of a remote tile's pixels (0 for a blank canvas). */
export async function pixelSpread(page, who) {
  return page.evaluate((w) => {
    const c = document.querySelector(`.tile[data-who="${w}"] canvas`);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 16) { const v = d[i] + d[i + 1] + d[i + 2]; sum += v; sq += v * v; n++; }
    const mean = sum / n;
    return Math.sqrt(sq / n - mean * mean);
  }, who);
}
