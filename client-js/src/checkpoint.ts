// Signed checkpoints of the gateway's logs, in the C2SP formats: the text is a
// tlog-checkpoint (origin, size, base64 root, one per line) and the signature makes it a
// signed note (`— <key name> <base64(key id || Ed25519 signature)>` after a blank line).
// Checked with Web Crypto against public keys the app pins, the way the Rust SDK checks.

import { DirectoryError } from './errors.js';
import { b64, buf, concat, hex, sha256, unb64, utf8 } from './encoding.js';

/** The key log's name in its checkpoints. */
export const KEY_LOG_ORIGIN = 'icbt-gateway/keys';
/** The access log's name in its checkpoints. */
export const ACCESS_LOG_ORIGIN = 'icbt-gateway/audit/v1';

const SIGNATURE_PREFIX = '\u2014 ';
const ED25519 = 0x01;

export interface Checkpoint {
  origin: string;
  size: bigint;
  root: Uint8Array;
}

/** One signature line of a note. */
export interface NoteSignature {
  name: string;
  /** Four-byte key id, hex. */
  keyId: string;
  signature: Uint8Array;
}

function bad(code: string, message: string): DirectoryError {
  return new DirectoryError(code, message);
}

/** Parses the checkpoint text (the note's signed part). Extension lines are refused. */
export function parseCheckpoint(body: string): Checkpoint {
  if (!body.endsWith('\n')) throw bad('malformed', 'checkpoint body');
  const lines = body.slice(0, -1).split('\n');
  if (lines.length !== 3) throw bad('malformed', 'checkpoint body');
  const [origin, size, root] = lines as [string, string, string];
  const rootBytes = unb64(root);
  if (!origin || !/^(0|[1-9]\d{0,18})$/.test(size) || !rootBytes || rootBytes.length !== 32) {
    throw bad('malformed', 'checkpoint body');
  }
  return { origin, size: BigInt(size), root: rootBytes };
}

/** Splits a signed note at its last blank line and reads every signature line. */
export function parseNote(note: string): { text: string; signatures: NoteSignature[] } {
  // eslint-disable-next-line no-control-regex
  if (note.length > 1 << 20 || /[\u0000-\u0009\u000b-\u001f\u007f]/.test(note)) throw bad('malformed', 'checkpoint note');
  const split = note.lastIndexOf('\n\n');
  if (split < 0 || !note.endsWith('\n')) throw bad('malformed', 'checkpoint note');
  const text = note.slice(0, split + 1);
  const signatures = note
    .slice(split + 2, -1)
    .split('\n')
    .map((line) => {
      const parts = line.startsWith(SIGNATURE_PREFIX) ? line.slice(SIGNATURE_PREFIX.length).split(' ') : [];
      const blob = parts.length === 2 ? unb64(parts[1]!) : undefined;
      if (!blob || blob.length < 5 || !validKeyName(parts[0]!)) throw bad('malformed', 'checkpoint note signature line');
      return { name: parts[0]!, keyId: hex(blob.subarray(0, 4)), signature: blob.subarray(4) };
    });
  if (signatures.length > 100) throw bad('malformed', 'checkpoint note');
  return { text, signatures };
}

function validKeyName(name: string): boolean {
  return name.length > 0 && !/[\s+]/u.test(name);
}

/** The note key id of Ed25519 `publicKey` under `name`: hex of SHA-256(name \n 0x01 key)[:4]. */
export async function keyId(name: string, publicKey: Uint8Array): Promise<string> {
  return hex((await sha256(concat(utf8.encode(`${name}\n`), Uint8Array.of(ED25519), publicKey))).subarray(0, 4));
}

/** The C2SP verifier key `name+id+base64(0x01 || key)`, what a verifier pins. */
export async function verifierKey(name: string, publicKey: Uint8Array): Promise<string> {
  return `${name}+${await keyId(name, publicKey)}+${b64(concat(Uint8Array.of(ED25519), publicKey))}`;
}

/**
 * Reads a C2SP verifier key `name+id+base64(0x01 || key)`, checking that the id is the
 * key's: what a verifier pins.
 */
export async function parseVerifierKey(text: string): Promise<{ name: string; keyId: string; publicKey: Uint8Array }> {
  // The key's base64 may hold '+' itself; the name and the id cannot.
  const trimmed = text.trim();
  const first = trimmed.indexOf('+');
  const second = first < 0 ? -1 : trimmed.indexOf('+', first + 1);
  const parts = second < 0 ? [] : [trimmed.slice(0, first), trimmed.slice(first + 1, second), trimmed.slice(second + 1)];
  const blob = parts.length === 3 ? unb64(parts[2]!) : undefined;
  if (!blob || blob.length !== 33 || blob[0] !== ED25519 || !validKeyName(parts[0]!)) {
    throw bad('malformed', 'verifier key: expected name+id+base64 Ed25519 key');
  }
  const [name, id] = parts as [string, string, string];
  const publicKey = blob.subarray(1);
  if ((await keyId(name, publicKey)) !== id) throw bad('malformed', 'verifier key: the id does not match the key');
  return { name, keyId: id, publicKey };
}

/**
 * Verifies a checkpoint note of log `origin` with one of the `trusted` raw Ed25519
 * public keys: the signature line named after the origin must be by a trusted key and
 * verify. Other lines (a witness's cosignatures) are left alone.
 */
export async function verifyCheckpointNote(note: string, trusted: readonly Uint8Array[], origin: string): Promise<Checkpoint> {
  const { text, signatures } = parseNote(note);
  const checkpoint = parseCheckpoint(text);
  if (checkpoint.origin !== origin) throw bad('wrong-log', `checkpoint is of \`${checkpoint.origin}\`, not ${origin}`);
  const line = signatures.find((s) => s.name === origin);
  if (!line) throw bad('malformed', `checkpoint note: no signature by ${origin}`);
  let key: Uint8Array | undefined;
  for (const k of trusted) if ((await keyId(origin, k)) === line.keyId) key = k;
  if (!key) throw bad('untrusted-checkpoint', `checkpoint: the checkpoint is signed by key ${line.keyId}, which is not trusted`);
  let ok = false;
  if (line.signature.length === 64) {
    const publicKey = await crypto.subtle.importKey('raw', buf(key), { name: 'Ed25519' }, false, ['verify']);
    ok = await crypto.subtle.verify({ name: 'Ed25519' }, publicKey, buf(line.signature), buf(utf8.encode(text)));
  }
  if (!ok) throw bad('untrusted-checkpoint', "checkpoint: the checkpoint's signature does not verify");
  return checkpoint;
}

/** Verifies the `note` of a checkpoint view the gateway's JSON API answers with. */
export async function verifyCheckpoint(view: unknown, trusted: readonly Uint8Array[], origin: string): Promise<Checkpoint> {
  const v = (view ?? {}) as Record<string, unknown>;
  if (typeof v.note !== 'string') throw bad('malformed', 'checkpoint: `note` missing');
  return verifyCheckpointNote(v.note, trusted, origin);
}
