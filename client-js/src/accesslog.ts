// Access-log records as the gateway hashes them into its tree: the leaf is the record's
// canonical JSON with a version and its own position, `{"v":1,"index":N,…}`, fields in
// the order below, absent ones as null. A verifier rebuilds it from the fields it shows,
// so a record changed after it was logged no longer proves into a signed root.

import { utf8 } from './encoding.js';

/** The fields of an access record, in the order the gateway hashes them. */
export const ACCESS_RECORD_FIELDS = [
  'id',
  'recorded_at_ms',
  'action',
  'outcome',
  'reason',
  'principal_kind',
  'principal_id',
  'principal_organisation',
  'issuer',
  'client_id',
  'token_jti',
  'resource_type',
  'resource_id',
  'episode_id',
  'patient',
  'request_id',
  'source',
] as const;

/** The leaf bytes of `record` (a record view of the auditor API, with its `index`). */
export function accessRecordLeaf(record: Record<string, unknown> & { index: number }): Uint8Array {
  const leaf: Record<string, unknown> = { v: 1, index: record.index };
  for (const f of ACCESS_RECORD_FIELDS) leaf[f] = record[f] ?? null;
  return utf8.encode(JSON.stringify(leaf));
}
