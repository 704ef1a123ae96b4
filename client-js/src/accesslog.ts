// Access-log records as the gateway hashes them into its tree. A verifier rebuilds the
// leaf from the fields it shows, so a record changed after it was logged no longer proves
// into a signed root.
//
// Leaf format 2 (`leaf_format: 2`): a header of what retention keeps,
// `{"v":2,"index":N,"id":…,"recorded_at_ms":…,"action":…,"content":"<hex>"}`, where
// `content` is the SHA-256 of `{"v":2,"outcome":…,…,"source":…}` (the other fields, in
// the order below, absent ones as null). Format 1, of records logged before it: the whole
// record, `{"v":1,"index":N,"id":…,…}`.

import { hex, sha256, utf8 } from './encoding.js';

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

/** The fields a format-2 leaf keeps in its header; the rest are hashed as its content. */
const HEADER_FIELDS = ['id', 'recorded_at_ms', 'action'] as const;

/**
 * The leaf bytes of `record` (a record view of the auditor API, with its `index` and
 * `leaf_format`).
 */
export async function accessRecordLeaf(
  record: Record<string, unknown> & { index: number; leaf_format?: number },
): Promise<Uint8Array> {
  if (record.leaf_format === 1) {
    const leaf: Record<string, unknown> = { v: 1, index: record.index };
    for (const f of ACCESS_RECORD_FIELDS) leaf[f] = record[f] ?? null;
    return utf8.encode(JSON.stringify(leaf));
  }
  const content: Record<string, unknown> = { v: 2 };
  for (const f of ACCESS_RECORD_FIELDS) {
    if (!(HEADER_FIELDS as readonly string[]).includes(f)) content[f] = record[f] ?? null;
  }
  const leaf: Record<string, unknown> = { v: 2, index: record.index };
  for (const f of HEADER_FIELDS) leaf[f] = record[f] ?? null;
  leaf.content = hex(await sha256(utf8.encode(JSON.stringify(content))));
  return utf8.encode(JSON.stringify(leaf));
}
