// A send whose answer breaks off, against a scripted gateway (`fetch` passed in): the
// status line alone does not say what was committed, so the sealed bytes stay kept and
// are sent again, and the gateway's answer to the same bytes is the first receipt.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, MemoryStore, NetworkError } from '../dist/index.js';

const receipt = '{"seq":7,"id":"5f0c2f6e-3c1a-4d7e-9a37-2b1f0d6c8e11"}';

/** A 201 whose body stops after its first bytes. */
const brokenOff = () =>
  new Response(
    new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(receipt.slice(0, 5)));
        controller.error(new Error('connection reset'));
      },
    }),
    { status: 201, headers: { 'content-type': 'application/json' } },
  );
const whole = () => new Response(receipt, { status: 201, headers: { 'content-type': 'application/json' } });

test('a send whose answer breaks off stays kept, and its resend gets the receipt', async () => {
  const store = new MemoryStore();
  const name = 'pending:0b7e3b9a-6a55-4d4e-8d0a-1c2f3e4d5a6b:5f0c2f6e-3c1a-4d7e-9a37-2b1f0d6c8e11';
  const kept = {
    episode: '0b7e3b9a-6a55-4d4e-8d0a-1c2f3e4d5a6b',
    messageId: '5f0c2f6e-3c1a-4d7e-9a37-2b1f0d6c8e11',
    kind: 'message',
    envelope: 'AAAA',
    attachments: [],
    fingerprint: 'f',
  };
  await store.set(name, kept);
  const answers = [brokenOff, whole];
  const bodies = [];
  const client = new Client({
    gateway: 'https://gateway.example/',
    auth: { type: 'bearer', token: 'token' },
    logKeys: [new Uint8Array(32)],
    store,
    fetch: async (url, init) => {
      bodies.push(init.body);
      return answers.shift()();
    },
  });

  await assert.rejects(client.resendPending(), (e) => e instanceof NetworkError && e.mayRetry);
  assert.deepEqual(await store.get(name), kept, 'the sealed bytes were dropped though nothing says they arrived');

  assert.deepEqual(await client.resendPending(), [JSON.parse(receipt)]);
  assert.equal(await store.get(name), undefined);
  assert.equal(bodies.length, 2);
  assert.equal(bodies[0], bodies[1], 'the resend carries other bytes');
});
