// Checkpoint notes: the C2SP signed-note specification's example verifies here, a note
// signed by the Rust crate's format verifies, and a changed byte, another key or another
// log is refused by code.

import assert from 'node:assert/strict';
import test from 'node:test';

import { DirectoryError, keyId, parseNote, parseVerifierKey, verifierKey, verifyCheckpointNote } from '../dist/index.js';

const SPEC_KEY = 'example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k';
const SPEC_NOTE = 'This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n';

test('the specification example: its key id and verifier key come out the same here', async () => {
  const raw = Buffer.from(SPEC_KEY.split('+')[2], 'base64').subarray(1);
  assert.equal(await keyId('example.com/foo', new Uint8Array(raw)), '530d903a');
  assert.equal(await verifierKey('example.com/foo', new Uint8Array(raw)), SPEC_KEY);
  const parsed = await parseVerifierKey(SPEC_KEY);
  assert.deepEqual([parsed.name, parsed.keyId, Buffer.from(parsed.publicKey).equals(raw)], ['example.com/foo', '530d903a', true]);
  await assert.rejects(parseVerifierKey(SPEC_KEY.replace('530d903a', '530d903b')), DirectoryError);
  await assert.rejects(parseVerifierKey('example.com/foo+530d903a'), DirectoryError);
  // A key whose base64 holds '+' still reads.
  for (let b = 0; b < 256; b++) {
    const key = await verifierKey('log.example/a', new Uint8Array(32).fill(b));
    if (key.split('+').length > 3) {
      assert.equal((await parseVerifierKey(key)).name, 'log.example/a');
      break;
    }
  }
  const note = parseNote(SPEC_NOTE);
  assert.equal(note.text, 'This is an example message.\n');
  assert.deepEqual(note.signatures.map((s) => [s.name, s.keyId]), [['example.com/foo', '530d903a']]);
});

async function signed(origin, body) {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const signature = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, pair.privateKey, new TextEncoder().encode(body)));
  const id = Buffer.from(await keyId(origin, raw), 'hex');
  const line = `\u2014 ${origin} ${Buffer.concat([id, signature]).toString('base64')}\n`;
  return { raw, note: `${body}\n${line}` };
}

test('a checkpoint note verifies with its key, and is refused changed, re-keyed or of another log', async () => {
  const origin = 'icbt-gateway/audit/v1';
  const body = `${origin}\n42\n${Buffer.alloc(32, 7).toString('base64')}\n`;
  const { raw, note } = await signed(origin, body);
  const checkpoint = await verifyCheckpointNote(note, [raw], origin);
  assert.equal(checkpoint.size, 42n);
  const code = async (promise) => {
    try {
      await promise;
    } catch (e) {
      assert.ok(e instanceof DirectoryError);
      return e.code;
    }
    assert.fail('accepted');
  };
  assert.equal(await code(verifyCheckpointNote(note.replace('\n42\n', '\n43\n'), [raw], origin)), 'untrusted-checkpoint');
  const other = await signed(origin, body);
  assert.equal(await code(verifyCheckpointNote(note, [other.raw], origin)), 'untrusted-checkpoint');
  assert.equal(await code(verifyCheckpointNote(note, [raw], 'icbt-gateway/keys')), 'wrong-log');
  assert.equal(await code(verifyCheckpointNote(note.replace('\n\n', '\n'), [raw], origin)), 'malformed');
  assert.equal(await code(verifyCheckpointNote(`${body}extension\n\n${note.split('\n\n')[1]}`, [raw], origin)), 'malformed');
  // A witness's cosignature line beside ours is left alone.
  const cosigned = `${note}\u2014 witness.example AAAAAAAAAAAAAAAA\n`;
  assert.equal((await verifyCheckpointNote(cosigned, [raw], origin)).size, 42n);
});
