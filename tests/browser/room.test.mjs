// The web client as people use it: accounts, a meeting with camera and microphone, chat with
// an emoji and an image, a late joiner, and the classroom floor. Fake camera and microphone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startRelay, launchBrowser, waitFor, signUp, createRoom, joinRoom, frames, pixelSpread, root } from './harness.mjs';

const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');
const out = join(root, 'test-output');

test('meeting: two people see and hear each other, chat, a third joins late', { timeout: 120000 }, async () => {
  mkdirSync(out, { recursive: true });
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const alice = await signUp(browser, relay, 'alice');
    await alice.screenshot({ path: join(out, 'lobby.png') });
    const id = await createRoom(alice, 'standup');
    // Alone in the room: an empty state that says what to do.
    assert.ok(await alice.isVisible('#empty'), 'no empty state');
    assert.ok(await alice.isVisible('#logout'), 'no visible log-out');
    const bob = await signUp(browser, relay, 'bob');
    await joinRoom(bob, id);
    await waitFor(alice, () => document.getElementById('empty').hidden);

    await waitFor(alice, () => (window.roomcast.stats().viewers.bob?.frames ?? 0) > 30, 30000);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.frames ?? 0) > 30, 30000);
    assert.ok((await pixelSpread(alice, 'bob')) > 5, 'bob renders as a blank picture at alice');
    assert.ok((await pixelSpread(bob, 'alice')) > 5, 'alice renders as a blank picture at bob');
    await waitFor(alice, () => (window.roomcast.stats().viewers.bob?.audioRms ?? 0) > 0.001, 15000);
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.audioRms ?? 0) > 0.001, 15000);
    // Lip sync: alice's picture at bob is held back to when her sound is heard (skew: the
    // median of drawn frames' capture age minus the age of the audio playing then).
    await waitFor(bob, () => (window.roomcast.stats().viewers.alice?.avSkewSamples ?? 0) > 60, 20000);
    const skew = await bob.evaluate(() => window.roomcast.stats().viewers.alice.avSkewP50);
    console.log(`audio/video skew at bob for alice: ${skew} ms (video later if positive)`);
    // The picture must not run ahead of the sound (unsynced it did, by about 200 ms here).
    // It may trail it when decoding falls behind on a loaded machine: no hold can undo that;
    // tests/browser/latency.mjs reports the skew as a figure.
    assert.ok(skew >= -40, `video ${-skew} ms ahead of its audio`);
    // Whoever is heard gets the speaking outline (the fake microphone beeps).
    await waitFor(bob, () => document.querySelector('.tile[data-who="alice"].speaking'), 15000);

    // Chat: emoji text and an image, from alice to bob.
    await alice.fill('#chat-text', 'hello 👋🏽 from alice');
    await alice.setInputFiles('#chat-image', { name: 'dot.png', mimeType: 'image/png', buffer: PNG });
    await alice.click('#chat-form button[type=submit]');
    await waitFor(bob, () => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes('hello 👋🏽 from alice')));
    await waitFor(bob, () => [...document.querySelectorAll('#messages img')].some((i) => i.complete && i.naturalWidth === 1));

    // Switching the camera keeps the picture flowing without leaving the room.
    const beforeSwitch = await frames(bob, 'alice');
    await alice.selectOption('#camera-select', { index: 0 });
    await waitFor(bob, (n) => (window.roomcast.stats().viewers.alice?.frames ?? 0) > n + 20, 20000, beforeSwitch);

    // A third participant joins late and sees both at once (from the current keyframe).
    const carol = await signUp(browser, relay, 'carol');
    await joinRoom(carol, id);
    await waitFor(carol, () => ['alice', 'bob'].every((w) => (window.roomcast.stats().viewers[w]?.frames ?? 0) > 10), 30000);
    assert.ok([...(await carol.$$eval('#messages li', (l) => l.map((x) => x.textContent)))].some((t) => t.includes('👋🏽')), 'chat history replayed to the late joiner');
    await waitFor(alice, () => (window.roomcast.stats().viewers.carol?.frames ?? 0) > 10, 30000);
    await alice.screenshot({ path: join(out, 'room-three-participants.png') });
    // The room link is one click away. (Granting clipboard access resets the page's other
    // permissions in Chromium, so this comes last.)
    await alice.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: relay.http });
    await alice.click('#copy-link');
    assert.equal(await alice.evaluate(() => navigator.clipboard.readText()), `${relay.http}/#room=${id}`);
  } finally {
    await browser.close();
    relay.stop();
  }
});

test('classroom: raise hand, grant the floor, the student appears, revoke, it stops', { timeout: 120000 }, async () => {
  const relay = await startRelay();
  const browser = await launchBrowser();
  try {
    const teacher = await signUp(browser, relay, 'teacher');
    const id = await createRoom(teacher, 'physics', 'classroom');
    const ann = await signUp(browser, relay, 'ann');
    await joinRoom(ann, id);
    const ben = await signUp(browser, relay, 'ben');
    await joinRoom(ben, id);
    // Students are viewers: they see the teacher and publish nothing.
    await waitFor(ann, () => (window.roomcast.stats().viewers.teacher?.frames ?? 0) > 10, 30000);
    assert.equal(await ann.evaluate(() => window.roomcast.state.publisher), null);

    await ann.click('#hand');
    await teacher.waitForSelector('#hands button[data-action=grant][data-who=ann]', { timeout: 10000 });
    await teacher.click('#hands button[data-action=grant][data-who=ann]');
    await waitFor(teacher, () => (window.roomcast.stats().viewers.ann?.frames ?? 0) > 20, 30000);
    await waitFor(ben, () => (window.roomcast.stats().viewers.ann?.frames ?? 0) > 20, 30000);

    await teacher.waitForSelector('#hands button[data-action=revoke][data-who=ann]', { timeout: 10000 });
    await teacher.click('#hands button[data-action=revoke][data-who=ann]');
    await new Promise((r) => setTimeout(r, 2000));
    const before = await frames(ben, 'ann');
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(await frames(ben, 'ann'), before, 'ann still reaches ben after the floor was taken back');
  } finally {
    await browser.close();
    relay.stop();
  }
});
