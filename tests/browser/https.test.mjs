// The web client over HTTPS with a CA-issued certificate: the page loads over TLS from the
// HTTP port, plain HTTP there is redirected, and WebTransport connects without pinning the
// certificate by hash (serverCertificateHashes refuses certificates valid over 14 days, so a
// client that pinned it would fail). The test CA is made a trusted root in an NSS database of
// the browser's own (its HOME), as an administrator would install a root. Chromium takes QUIC
// certificates from a local root only for hosts named in --origin-to-force-quic-on (with a
// public CA nothing is needed); the certificate is still verified against that root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRelay, publish, launchBrowser, waitFor } from './harness.mjs';

/** A CA and a 90-day ECDSA leaf for 127.0.0.1 it signed; a HOME whose NSS database trusts the CA. */
function caIssued(dir) {
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  ssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca-key.pem');
  ssl('req', '-x509', '-new', '-key', 'ca-key.pem', '-days', '365', '-subj', '/CN=roomcast test CA', '-out', 'ca.pem');
  ssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'leaf-key.pem');
  ssl('req', '-new', '-key', 'leaf-key.pem', '-subj', '/CN=127.0.0.1', '-out', 'leaf.csr');
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
    '-days', '90', '-extfile', 'ext.cnf', '-out', 'leaf.pem');
  writeFileSync(join(dir, 'chain.pem'), readFileSync(join(dir, 'leaf.pem')) + readFileSync(join(dir, 'ca.pem')));
  const home = join(dir, 'home');
  const db = `sql:${join(home, '.pki', 'nssdb')}`;
  mkdirSync(join(home, '.pki', 'nssdb'), { recursive: true });
  execFileSync('certutil', ['-d', db, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', db, '-A', '-t', 'C,,', '-n', 'roomcast test CA', '-i', join(dir, 'ca.pem')]);
  return { cert: join(dir, 'chain.pem'), key: join(dir, 'leaf-key.pem'), home };
}

test('over HTTPS with a CA-issued certificate the page connects without pinning it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'roomcast-ca-'));
  const ca = caIssued(dir);
  const relay = await startRelay({ extra: ['--tls-cert', ca.cert, '--tls-key', ca.key, '--http-plain', 'false'] });
  const pub = publish(relay, 'r1', 'alice', ['--video-kbps', '400', '--audio-kbps', '0', '--gop-secs', '1']);
  const quicHost = relay.webtransport.replace('https://', '');
  const browser = await launchBrowser([`--origin-to-force-quic-on=${quicHost}`], { env: { HOME: ca.home } });
  try {
    assert.match(relay.http, /^https:\/\//, 'the ready line names the HTTPS address');
    // Plain HTTP on the same port is only a redirect.
    const plain = relay.http.replace('https://', 'http://');
    const redirect = await new Promise((resolve, reject) =>
      get(`${plain}/api/info`, (r) => { r.resume(); resolve(r); }).on('error', reject));
    assert.equal(redirect.statusCode, 308);
    assert.equal(redirect.headers.location, `${relay.http}/api/info`);

    const page = await browser.newPage();
    const token = relay.token('r1', 'viewer', 'subscribe');
    await page.goto(`${relay.http}/check.html?token=${token}&room=r1&watch=alice&track=video`);
    const info = await page.evaluate(async () => (await fetch('/api/info')).json());
    assert.equal(info.cert_pin, false, 'a CA-issued certificate is not to be pinned');
    await waitFor(page, () => window.roomcast && window.roomcast.verified >= 30);
    const state = await page.evaluate(() => ({ ...window.roomcast, groups: window.roomcast.groups.size }));
    assert.deepEqual(state.errors, []);
    assert.equal(state.verified, state.objects);
  } finally {
    await browser.close();
    pub.kill('SIGTERM');
    relay.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
