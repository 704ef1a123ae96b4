// The key directory, checked as the Rust SDK checks it: a key counts only when its publish
// leaf is proven to be in a key-log checkpoint signed by a pinned key, and a newer
// checkpoint only when it is proven to extend the one seen before. A key the server
// swapped, added or removed is caught here, or by anyone comparing checkpoints.

import { DirectoryError } from './errors.js';
import { b64, unb64, utf8 } from './encoding.js';
import { type Checkpoint, KEY_LOG_ORIGIN, verifyCheckpoint } from './checkpoint.js';
import { directoryKey, type PublicKey, sameKey } from './jwk.js';
import { leafHash, verifyConsistency, verifyInclusion } from './merkle.js';
import { isObject } from './json.js';

/** A verified key-log head: what a client remembers between calls and runs. */
export interface TreeHead {
  size: number;
  /** Base64 root hash. */
  root: string;
}

/** A device whose keys are proven to be in the log. */
export interface KnownDevice {
  deviceId: string;
  /** `patient:…`, `clinician:…`, `system:…` or `journal:…`. */
  owner: string;
  signing: PublicKey;
  encryption: PublicKey;
  expiresAtMs: number;
  /** A revoke leaf for it is proven too. */
  revoked: boolean;
}

export function activeAt(device: KnownDevice, nowMs: number): boolean {
  return !device.revoked && nowMs < device.expiresAtMs;
}

/** Verified devices against one head. */
export class Directory {
  constructor(
    readonly head: TreeHead,
    readonly devices: readonly KnownDevice[],
  ) {}

  /** The encryption keys of every active device: whom a message is sealed to. */
  recipients(nowMs = Date.now()): PublicKey[] {
    return this.devices.filter((d) => activeAt(d, nowMs)).map((d) => d.encryption);
  }

  device(deviceId: string): KnownDevice | undefined {
    return this.devices.find((d) => d.deviceId === deviceId);
  }

  /** The active signing keys of `owner`, for a safety number. */
  signingKeysOf(owner: string, nowMs = Date.now()): PublicKey[] {
    return this.devices.filter((d) => d.owner === owner && activeAt(d, nowMs)).map((d) => d.signing);
  }
}

function bad(code: string, message: string): DirectoryError {
  return new DirectoryError(code, message);
}

/** Base64 hashes of a proof. */
export function proofHashes(value: unknown): Uint8Array[] {
  if (!Array.isArray(value)) throw bad('malformed', 'proof is not a list');
  return value.map((h) => {
    const bytes = typeof h === 'string' ? unb64(h) : undefined;
    if (!bytes || bytes.length !== 32) throw bad('malformed', 'proof hash is not base64 SHA-256');
    return bytes;
  });
}

function str(value: Record<string, unknown>, key: string): string {
  const v = value[key];
  if (typeof v !== 'string') throw bad('malformed', `\`${key}\` missing`);
  return v;
}

/** Checks that `leafView` (`index`, `leaf`, `proof`) is in the tree of `head`; returns the leaf's JSON. */
async function included(leafView: unknown, head: Checkpoint): Promise<Record<string, unknown>> {
  if (!isObject(leafView)) throw bad('malformed', 'leaf missing');
  const index = leafView.index;
  if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0) throw bad('malformed', 'leaf index');
  const text = str(leafView, 'leaf');
  const proof = proofHashes(leafView.proof);
  const failure = await verifyInclusion(await leafHash(utf8.encode(text)), BigInt(index), head.size, proof, head.root);
  if (failure) throw bad('not-in-log', `leaf ${index} is not in the signed log: ${failure}`);
  let leaf: unknown;
  try {
    leaf = JSON.parse(text);
  } catch {
    throw bad('malformed', 'leaf is not JSON');
  }
  if (!isObject(leaf) || leaf.v !== 1 || leaf.index !== index) throw bad('malformed', `leaf ${index} has another version or index`);
  return leaf;
}

/**
 * Verifies a directory answer (`checkpoint` + `devices`) against `trusted` checkpoint keys:
 * every device's keys must be exactly those of its proven publish leaf.
 */
export async function verifyDirectory(view: unknown, trusted: readonly Uint8Array[]): Promise<Directory> {
  if (!isObject(view)) throw bad('malformed', 'directory answer is not an object');
  const head = await verifyCheckpoint(view.checkpoint, trusted, KEY_LOG_ORIGIN);
  if (!Array.isArray(view.devices)) throw bad('malformed', 'devices is not a list');
  const devices: KnownDevice[] = [];
  for (const d of view.devices) {
    if (!isObject(d)) throw bad('malformed', 'device is not an object');
    const deviceId = str(d, 'device_id');
    const owner = str(d, 'owner');
    const signing = await directoryKey(d.signing_jwk, 'signing_jwk');
    const encryption = await directoryKey(d.encryption_jwk, 'encryption_jwk');
    if (signing.thumbprint !== deviceId || encryption.thumbprint !== str(d, 'encryption_kid')) {
      throw bad('differs-from-log', `device ${deviceId}: ids are not its keys`);
    }
    const expiresAtMs = d.expires_at_ms;
    if (typeof expiresAtMs !== 'number') throw bad('malformed', 'expires_at_ms');
    const leaf = await included(d.publish, head);
    const leafSigning = await directoryKey(leaf.signing_jwk, 'leaf signing_jwk').catch(() => undefined);
    const leafEncryption = await directoryKey(leaf.encryption_jwk, 'leaf encryption_jwk').catch(() => undefined);
    const same =
      leaf.op === 'publish' &&
      leaf.device === deviceId &&
      leaf.owner === owner &&
      leaf.expires_at_ms === expiresAtMs &&
      leafSigning !== undefined &&
      sameKey(leafSigning, signing) &&
      leafEncryption !== undefined &&
      sameKey(leafEncryption, encryption);
    if (!same) throw bad('differs-from-log', `device ${deviceId}: keys or owner differ from the log`);
    let revoked = false;
    if (d.revoke !== undefined && d.revoke !== null) {
      const r = await included(d.revoke, head);
      if (r.op !== 'revoke' || r.device !== deviceId) throw bad('differs-from-log', `device ${deviceId}: revoke leaf mismatch`);
      revoked = true;
    } else if (d.revoked_at_ms !== undefined && d.revoked_at_ms !== null) {
      throw bad('revoke-unproven', `device ${deviceId}: revoked without a proven revoke leaf`);
    }
    devices.push({ deviceId, owner, signing, encryption, expiresAtMs, revoked });
  }
  return new Directory({ size: Number(head.size), root: b64(head.root) }, devices);
}

/** Checks that `next` extends `previous` with `proof`; a log that shrank or forked is an error. */
export async function checkConsistency(previous: TreeHead, next: TreeHead, proof: readonly Uint8Array[]): Promise<void> {
  if (next.size < previous.size) {
    throw bad('log-shrank', `the key log shrank from ${previous.size} to ${next.size} leaves`);
  }
  const root = (h: TreeHead) => {
    const bytes = unb64(h.root);
    if (!bytes || bytes.length !== 32) throw bad('malformed', 'root is not base64 SHA-256');
    return bytes;
  };
  const failure = await verifyConsistency(BigInt(previous.size), BigInt(next.size), root(previous), root(next), proof);
  if (failure) throw bad('log-forked', `the key log does not extend the one seen before: ${failure}`);
}
