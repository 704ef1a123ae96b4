// Signed checkpoints of the gateway's logs: the text the gateway signs (origin, size,
// base64 root, time, one per line) and its Ed25519 signature, checked with Web Crypto
// against public keys the app pins.

import { DirectoryError } from './errors.js';
import { buf, hex, sha256, unb64, utf8 } from './encoding.js';

/** The key log's name in its checkpoints. */
export const KEY_LOG_ORIGIN = 'icbt-gateway/keys';
/** The access log's name in its checkpoints. */
export const ACCESS_LOG_ORIGIN = 'icbt-gateway/audit/v1';

export interface Checkpoint {
  origin: string;
  size: bigint;
  root: Uint8Array;
  timestampMs: number;
}

function bad(code: string, message: string): DirectoryError {
  return new DirectoryError(code, message);
}

/** Parses the signed text. */
export function parseCheckpoint(body: string): Checkpoint {
  if (!body.endsWith('\n')) throw bad('malformed', 'checkpoint body');
  const lines = body.slice(0, -1).split('\n');
  if (lines.length !== 4) throw bad('malformed', 'checkpoint body');
  const [origin, size, root, time] = lines as [string, string, string, string];
  const rootBytes = unb64(root);
  if (!origin || !/^(0|[1-9]\d{0,18})$/.test(size) || !rootBytes || rootBytes.length !== 32 || !/^-?\d{1,16}$/.test(time)) {
    throw bad('malformed', 'checkpoint body');
  }
  return { origin, size: BigInt(size), root: rootBytes, timestampMs: Number(time) };
}

/** A short name for a public key: hex of the first 8 bytes of its SHA-256. */
export async function keyId(publicKey: Uint8Array): Promise<string> {
  return hex(await sha256(publicKey)).slice(0, 16);
}

/**
 * Verifies a checkpoint view (`body`, `key_id`, base64 `signature`) with one of the
 * `trusted` raw Ed25519 public keys, and that it is of log `origin`.
 */
export async function verifyCheckpoint(view: unknown, trusted: readonly Uint8Array[], origin: string): Promise<Checkpoint> {
  const v = (view ?? {}) as Record<string, unknown>;
  if (typeof v.body !== 'string' || typeof v.key_id !== 'string' || typeof v.signature !== 'string') {
    throw bad('malformed', 'checkpoint: `body`, `key_id` or `signature` missing');
  }
  const checkpoint = parseCheckpoint(v.body);
  if (checkpoint.origin !== origin) throw bad('wrong-log', `checkpoint is of \`${checkpoint.origin}\`, not ${origin}`);
  let key: Uint8Array | undefined;
  for (const k of trusted) if ((await keyId(k)) === v.key_id) key = k;
  if (!key) throw bad('untrusted-checkpoint', `checkpoint: the checkpoint is signed by key ${v.key_id}, which is not trusted`);
  const signature = unb64(v.signature);
  let ok = false;
  if (signature && signature.length === 64) {
    const publicKey = await crypto.subtle.importKey('raw', buf(key), { name: 'Ed25519' }, false, ['verify']);
    ok = await crypto.subtle.verify({ name: 'Ed25519' }, publicKey, buf(signature), buf(utf8.encode(v.body)));
  }
  if (!ok) throw bad('untrusted-checkpoint', "checkpoint: the checkpoint's signature does not verify");
  return checkpoint;
}
