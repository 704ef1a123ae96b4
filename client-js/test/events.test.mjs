// The event stream's reconnects, against a scripted gateway (`fetch` passed in): a stream
// that drops before its first message resumes where it began, from the id-only event the
// gateway opens every stream with.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../dist/index.js';

const stream = (text) =>
  new Response(new Blob([text]).stream(), { status: 200, headers: { 'content-type': 'text/event-stream' } });

test('a stream dropped before its first message resumes where it began', async () => {
  const asked = [];
  const answers = [
    // Opened at the present, then the connection drops before any message.
    () => stream('id: 41.7\n\n'),
    // The reconnect: what was sent meanwhile.
    () => stream('id: 42.1\nevent: message\ndata: {"position":"42.1"}\n\n'),
  ];
  const client = new Client({
    gateway: 'https://gateway.example/',
    auth: { type: 'bearer', token: 'token' },
    logKeys: [new Uint8Array(32)],
    fetch: async (url, init) => {
      asked.push({ path: new URL(url).pathname, lastEventId: init.headers['last-event-id'] });
      const next = answers.shift();
      if (!next) throw new Error('no more answers');
      return next();
    },
  });
  const stop = new AbortController();
  const got = [];
  for await (const event of client.events({ mode: 'stream', signal: stop.signal })) {
    got.push(event);
    stop.abort();
  }
  assert.deepEqual(asked, [
    { path: '/v1/stream', lastEventId: undefined },
    { path: '/v1/stream', lastEventId: '41.7' },
  ]);
  assert.equal(got.length, 1);
  assert.equal(got[0].type, 'message');
  assert.equal(got[0].id, '42.1');
});

test('a resumed stream keeps the position it was given until an event moves it', async () => {
  const asked = [];
  const answers = [() => stream(': heartbeat\n\n'), () => stream('id: 9.2\nevent: message\ndata: {"position":"9.2"}\n\n')];
  const client = new Client({
    gateway: 'https://gateway.example/',
    auth: { type: 'bearer', token: 'token' },
    logKeys: [new Uint8Array(32)],
    fetch: async (url, init) => {
      asked.push(init.headers['last-event-id']);
      return answers.shift()();
    },
  });
  const stop = new AbortController();
  for await (const event of client.events({ after: '9.1', mode: 'stream', signal: stop.signal })) {
    assert.equal(event.id, '9.2');
    stop.abort();
  }
  assert.deepEqual(asked, ['9.1', '9.1']);
});
