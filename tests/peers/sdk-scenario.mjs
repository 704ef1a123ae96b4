// The JavaScript SDK's API against the real gateway, for what the command-line interop
// test does not reach: the long-poll fallback beside the event stream, receipts,
// encrypted attachments, revoking a device, and the typed errors of a wrong log key and a
// revoked sender. Started by tests/tests/client_js.rs with, in the environment:
//   ICBT_GATEWAY, ICBT_LOG_KEYS, ICBT_EPISODE, PATIENT_TOKEN, THERAPIST_TOKEN,
//   THERAPIST_DPOP (PKCS#8 file), NODE_EXTRA_CA_CERTS.
// Prints one JSON line of what it checked; exits 1 on the first failed check.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  Client,
  DirectoryError,
  DpopKey,
  EnvelopeError,
  GatewayError,
  generateDeviceKeys,
  parseContent,
  STREAM_START,
  textContent,
} from '../../client-js/dist/index.js';

const env = process.env;
const episode = env.ICBT_EPISODE;
const logKeys = env.ICBT_LOG_KEYS.split(',');
const patient = new Client({ gateway: env.ICBT_GATEWAY, auth: { type: 'bearer', token: readFileSync(env.PATIENT_TOKEN, 'utf8').trim() }, logKeys });
const therapist = new Client({
  gateway: env.ICBT_GATEWAY,
  auth: { type: 'dpop', token: readFileSync(env.THERAPIST_TOKEN, 'utf8').trim(), key: await DpopKey.fromPkcs8(new Uint8Array(readFileSync(env.THERAPIST_DPOP))) },
  logKeys,
});
const checked = [];
const ok = (what) => checked.push(what);

const patientKeys = await generateDeviceKeys();
const therapistKeys = await generateDeviceKeys();
await patient.publishDevice(patientKeys);
await therapist.publishDevice(therapistKeys);
const own = await patient.devices();
assert.ok(own.device(patientKeys.deviceId), 'the published device is listed, proven');
ok('publish and list');

// The stream and the long poll deliver the same entries in the same order.
const streamed = [];
const polled = [];
const stop = new AbortController();
const collect = async (mode, into) => {
  for await (const event of therapist.events({ after: STREAM_START, mode, signal: stop.signal })) {
    if (event.type === 'message') into.push(event.entry.message.id);
  }
};
const running = [collect('stream', streamed), collect('poll', polled)];
const sent = [];
for (const text of ['Hei', 'Jeg har gjort øvelsen', 'Tre ganger denne uka']) {
  sent.push((await patient.send(patientKeys, episode, 'message', textContent(text))).id);
}
const deadline = Date.now() + 30_000;
while ((streamed.length < 3 || polled.length < 3) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
stop.abort();
await Promise.all(running);
assert.deepEqual(streamed, sent, 'the stream delivers every send once, in order');
assert.deepEqual(polled, sent, 'the long poll delivers the same');
ok('stream and long-poll fallback');

// Receipts: the therapist reads up to 3; the patient sees the mark and an unread feedback.
const history = await therapist.history(therapistKeys, episode);
assert.deepEqual(history.messages.map((m) => parseContent(m.kind, m.opened.payload).text), ['Hei', 'Jeg har gjort øvelsen', 'Tre ganger denne uka']);
await therapist.markReceipts(episode, { deliveredUpTo: 3, readUpTo: 3 });
await therapist.send(therapistKeys, episode, 'feedback', textContent('Uke 4: Godt jobbet.'));
const receipts = await patient.receipts(episode);
assert.equal(receipts.unread, 1, JSON.stringify(receipts));
assert.ok(receipts.readers.some((r) => r.kind === 'clinician' && r.read_up_to === 3), JSON.stringify(receipts));
ok('receipts');

// An encrypted attachment: the gateway stores ciphertext; the therapist gets the bytes back.
const file = new Uint8Array(100_000);
for (let i = 0; i < file.length; i += 65_536) crypto.getRandomValues(file.subarray(i, i + 65_536));
const ref = await patient.uploadAttachment(episode, file, { name: 'søvndagbok.pdf', contentType: 'application/pdf' });
const back = await therapist.downloadAttachment(episode, ref);
assert.deepEqual(back, file);
await assert.rejects(therapist.downloadAttachment(episode, { ...ref, key: ref.key.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) }), (e) => e instanceof EnvelopeError && e.code === 'decrypt');
ok('attachments');

// A log key the client does not trust: the directory is refused, typed.
const stranger = new Client({ gateway: env.ICBT_GATEWAY, auth: { type: 'bearer', token: readFileSync(env.PATIENT_TOKEN, 'utf8').trim() }, logKeys: [btoa(String.fromCharCode(...new Uint8Array(32).fill(7)))] });
await assert.rejects(stranger.episodeKeys(episode), (e) => e instanceof DirectoryError && e.code === 'untrusted-checkpoint');
ok('untrusted log key');

// Revoke: the device is shown revoked (proven), is no longer sealed to, cannot send, and
// what it sent before still opens for the therapist.
const revoked = await patient.revokeDevice(patientKeys.deviceId);
assert.equal(revoked.device(patientKeys.deviceId)?.revoked, true);
const keys = await therapist.episodeKeys(episode);
assert.ok(!keys.recipients().some((r) => r.thumbprint === patientKeys.encryptionKid), 'no longer a recipient');
await therapist.send(therapistKeys, episode, 'feedback', textContent('Uke 5: Ny enhet? Registrer den i appen.'));
await assert.rejects(patient.send(patientKeys, episode, 'message', textContent('fra en trukket enhet')), (e) => e instanceof GatewayError && e.problemType.endsWith('envelope-sender-not-a-device') && !e.mayRetry);
const after = await therapist.history(therapistKeys, episode);
assert.ok(after.messages.filter((m) => m.senderDevice === patientKeys.deviceId).every((m) => m.opened && !m.error));
ok('revoke');

process.stdout.write(`${JSON.stringify({ checked })}\n`);
