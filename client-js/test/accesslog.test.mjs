// The leaf of an access record as the gateway builds it: the same vector is in the
// gateway's own tests (`leaf_format_2_vector`), so both sides agree byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accessRecordLeaf, leafHash } from '../dist/index.js';

const toHex = (b) => Buffer.from(b).toString('hex');

// `sample(1)` of the gateway's tests, as the auditor API shows it.
const record = {
  index: 3,
  leaf_format: 2,
  id: '00000000-0000-0000-0000-000000000001',
  recorded_at_ms: 1790000000001,
  action: 'read',
  outcome: 'success',
  reason: null,
  principal_kind: 'clinician',
  principal_id: '565501872',
  principal_organisation: '974633574',
  issuer: 'helseid',
  client_id: 'platform',
  token_jti: 'jti-1',
  resource_type: 'messages',
  resource_id: null,
  episode_id: '00000000-0000-0000-0000-000000000007',
  patient: '01018512345',
  request_id: 'req-1',
  source: '127.0.0.1',
};

test('a format-2 leaf matches the gateway byte for byte', async () => {
  const hash = await leafHash(await accessRecordLeaf(record));
  assert.equal(toHex(hash), '55a385e0ef7dac8f5c568ea8be87b1ed2a3c16a370956c91c2d0907fd82704c0');
});

test('every field is bound: one changed field gives another leaf', async () => {
  const base = toHex(await leafHash(await accessRecordLeaf(record)));
  for (const [field, value] of [['source', '10.0.0.1'], ['recorded_at_ms', 1], ['action', 'export'], ['index', 4], ['reason', 'x']]) {
    const changed = toHex(await leafHash(await accessRecordLeaf({ ...record, [field]: value })));
    assert.notEqual(changed, base, field);
  }
});

test('a format-1 leaf is the whole record', async () => {
  const leaf = new TextDecoder().decode(await accessRecordLeaf({ ...record, leaf_format: 1 }));
  assert.ok(leaf.startsWith('{"v":1,"index":3,"id":"00000000-0000-0000-0000-000000000001","recorded_at_ms":1790000000001,"action":"read","outcome":"success"'), leaf);
});
