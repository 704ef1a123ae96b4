// The envelope in Node's Web Crypto: round trips, an envelope the Rust crate sealed, and
// the refusals docs/envelope.md lists. The end-to-end suite runs the same code against
// the Rust CLI and the gateway (tests/tests/client_js.rs).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import test from 'node:test';

import { b64url, Client, Envelope, GatewayError, fromPrivateJson, generateDeviceKeys, parseContent, questionnaireContent, safetyNumber, seal, textContent, unb64url, StreamEndedError } from '../dist/index.js';

const utf8 = new TextEncoder();

// The fuzz-only device of envelope/fuzz/fuzz_targets/envelope.rs, to which the seed was sealed.
const FUZZ_ONLY_KEYS = JSON.stringify({
  signing: { kty: 'EC', crv: 'P-256', x: 'iGEMf31MhXpmkzc2Hzm8I1k6qNHVM4qyfhjcFEAj8gM', y: 'FFsaAnQnC0IQfemrXfktD9HDAUGZfsmI_uha0z3udVg', d: 'ReSZN6uLcE9bhitZHcMU0FblzGPxHF76Kgj_MZNGUe8' },
  encryption: { kty: 'EC', crv: 'P-256', x: '3kaDtMtFAGF7nd3dR_jfaMddgvbkjUhwdxSNW1yLtUY', y: 'jQnYJ-jZXn8OFCTsLMTwzvdvSPXpEFcaqoxuksRAyjQ', d: 'rToVFlBHV_AwhG96EVJgASuc_5gmOUuvctSRx4YbcYw' },
});

async function pair() {
  const sender = await generateDeviceKeys();
  const reader = await generateDeviceKeys();
  const binding = { episode: '4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11', message: '9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21', kind: 'feedback', sender: sender.deviceId };
  const key = (k) => ({ jwk: k.encryptionJwk, thumbprint: k.encryptionKid });
  const signer = { jwk: sender.signingJwk, thumbprint: sender.deviceId };
  return { sender, reader, binding, recipient: key(reader), signer };
}

async function refusal(bytes, code, keys, signer) {
  await assert.rejects(async () => {
    const envelope = await Envelope.parse(bytes);
    await envelope.open(keys, signer);
  }, (e) => e.code === code || assert.fail(`${e.code}: ${e.message}, expected ${code}`));
}

test('a sealed payload opens for its recipient with its binding', async () => {
  const { sender, reader, binding, recipient, signer } = await pair();
  const bytes = await seal(utf8.encode('Uke 3: godt jobbet'), binding, sender, [recipient]);
  const opened = await (await Envelope.parse(bytes)).open(reader, signer);
  assert.equal(new TextDecoder().decode(opened.payload), 'Uke 3: godt jobbet');
  assert.deepEqual(opened.binding, binding);
  assert.equal(reader.decryptionKey.extractable, false, 'device keys are non-extractable');
});

test('the envelope the Rust crate sealed (the fuzz seed) decrypts here', async () => {
  const seed = readFileSync(new URL('../../envelope/fuzz/seeds/seed-envelope.json', import.meta.url));
  const keys = await fromPrivateJson(FUZZ_ONLY_KEYS);
  const envelope = await Envelope.parse(new Uint8Array(seed));
  assert.equal(envelope.binding.kind, 'feedback');
  const signed = await envelope.decrypt(keys);
  assert.equal(new TextDecoder().decode(signed.payload), 'seed');
  assert.equal(signed.kid, 'ZsILxOwFarv0Jt8m7uXJykh4loSjB02o9Jl84L9r9VY');
});

test('tampering, another reader, another signer and loose JSON are refused by code', async () => {
  const { sender, reader, binding, recipient, signer } = await pair();
  const bytes = await seal(utf8.encode('hei'), binding, sender, [recipient]);
  const wire = JSON.parse(new TextDecoder().decode(bytes));
  const again = (w) => utf8.encode(JSON.stringify(w));

  const ct = unb64url(wire.ciphertext);
  ct[0] ^= 1;
  await refusal(again({ ...wire, ciphertext: b64url(ct) }), 'decrypt', reader, signer);
  await refusal(bytes, 'not-a-recipient', await generateDeviceKeys(), signer);
  const stranger = await generateDeviceKeys();
  await refusal(bytes, 'unknown-signer', reader, { jwk: stranger.signingJwk, thumbprint: stranger.deviceId });
  await refusal(again({ ...wire, aad: 'x' }), 'malformed', reader, signer);
  const text = new TextDecoder().decode(bytes);
  await refusal(utf8.encode(text.replace('{"protected"', '{"iv":"AAAAAAAAAAAAAAAA","protected"')), 'malformed', reader, signer);
  await refusal(again({ ...wire, recipients: [wire.recipients[0], wire.recipients[0]] }), 'duplicate-recipient', reader, signer);
  const header = JSON.parse(new TextDecoder().decode(unb64url(wire.protected)));
  await refusal(again({ ...wire, protected: b64url(utf8.encode(JSON.stringify({ ...header, enc: 'A128GCM' }))) }), 'unsupported', reader, signer);
  // A re-bound outer header fails the AES-GCM tag: the binding is authenticated.
  await refusal(again({ ...wire, protected: b64url(utf8.encode(JSON.stringify({ ...header, icbt_kind: 'message' }))) }), 'decrypt', reader, signer);
  const off = { ...wire.recipients[0].header.epk, y: wire.recipients[0].header.epk.x };
  await refusal(again({ ...wire, recipients: [{ ...wire.recipients[0], header: { ...wire.recipients[0].header, epk: off } }] }), 'invalid-point', reader, signer);
});

test('a signed message re-sealed under another binding is caught', async () => {
  const { sender, reader, binding, recipient, signer } = await pair();
  // The reader (a recipient) takes the signed inner JWS and seals it again as another kind.
  const envelope = await Envelope.parse(await seal(utf8.encode('hei'), binding, sender, [recipient]));
  const inner = await envelope.decrypt(reader);
  assert.equal(inner.binding.kind, 'feedback');
  const resealer = { ...sender, signingKey: (await generateDeviceKeys()).signingKey };
  const forged = await seal(utf8.encode('hei'), binding, resealer, [recipient]);
  await refusal(forged, 'bad-signature', reader, signer);
});

test('content is the export format; questionnaires are checked before they are sealed', () => {
  assert.deepEqual(parseContent('message', textContent('Hei', 'abc')), { text: 'Hei', in_response_to: 'abc' });
  assert.deepEqual(parseContent('questionnaire-response', questionnaireContent('PHQ-9', [0, 1, 2, 3, 0, 1, 2, 3, 1])).questionnaire.items.length, 9);
  assert.throws(() => questionnaireContent('PHQ-9', [0, 1]), /9 answers/);
  assert.throws(() => questionnaireContent('GAD-7', [0, 1, 2, 3, 0, 1, 4]), /each 0 to 3/);
  assert.throws(() => parseContent('message', utf8.encode('{"text":"a","text":"b"}')), /content format/);
  assert.throws(() => textContent('  '), /empty/);
});

test('the safety number is symmetric and changes with a device', async () => {
  const keys = async () => {
    const k = await generateDeviceKeys();
    return { jwk: k.signingJwk, thumbprint: k.deviceId };
  };
  const [a, b, c] = [await keys(), await keys(), await keys()];
  const number = await safetyNumber([a], [b, c]);
  assert.equal(number, await safetyNumber([c, b], [a]));
  assert.match(number, /^(\d{5} ){11}\d{5}$/);
  assert.notEqual(number, await safetyNumber([a], [b]));
});

test('a GET the gateway asks to retry is retried after Retry-After; a PUT is not', async () => {
  const answers = [];
  const fetch = async (url, init) => {
    answers.push(init.method);
    const limited = answers.filter((m) => m === init.method).length === 1;
    return limited
      ? new Response(JSON.stringify({ type: 'urn:icbt-gateway:problem:rate-limited' }), { status: 429, headers: { 'retry-after': '0', 'content-type': 'application/problem+json' } })
      : new Response(JSON.stringify({ kind: 'patient' }), { status: 200 });
  };
  const client = new Client({ gateway: 'https://gateway.test', auth: { type: 'bearer', token: 't' }, logKeys: [new Uint8Array(32)], fetch });
  assert.deepEqual(await client.me(), { kind: 'patient' });
  assert.deepEqual(answers, ['GET', 'GET']);
  await assert.rejects(client.call('PUT', 'v1/episodes/x/receipts', {}), (e) => e instanceof GatewayError && e.status === 429 && e.retryAfter === 0);
  assert.deepEqual(answers, ['GET', 'GET', 'PUT']);
});

test('an end event reconnects at once, or ends the iteration when the client must re-authenticate', async () => {
  const entry = (position) => ({ position, episode: 'e', message: { id: position } });
  const sse = (...events) => new Response(events.join(''), { status: 200, headers: { 'content-type': 'text/event-stream' } });
  const message = (position) => `id: ${position}\nevent: message\ndata: ${JSON.stringify(entry(position))}\n\n`;
  const end = (reason) => `event: end\ndata: ${JSON.stringify({ reason })}\n\n`;
  const opened = [];
  const bodies = [sse(message('1.1'), end('care-team-left')), sse(message('1.2'), end('expired'))];
  const fetch = async (url, init) => {
    opened.push({ url: String(url), after: init.headers['last-event-id'] });
    return bodies.shift();
  };
  const client = new Client({ gateway: 'https://gateway.test', auth: { type: 'bearer', token: 't' }, logKeys: [new Uint8Array(32)], fetch });
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const event of client.events({ mode: 'stream', device: 'dev-1' })) seen.push(event.id);
    })(),
    (e) => e instanceof StreamEndedError && e.code === 'expired' && !e.mayRetry,
  );
  assert.deepEqual(seen, ['1.1', '1.2']);
  assert.deepEqual(
    opened.map((o) => [o.url, o.after]),
    [
      ['https://gateway.test/v1/stream?device=dev-1', undefined],
      ['https://gateway.test/v1/stream?device=dev-1', '1.1'],
    ],
  );
});
