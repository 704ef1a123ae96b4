// P-256 public keys as JWKs: validation (a point on the curve, 32-byte coordinates), the
// RFC 7638 thumbprint that names devices and recipients, and import into Web Crypto.

import { DirectoryError, EnvelopeError } from './errors.js';
import { b64url, buf, sha256, unb64url, utf8 } from './encoding.js';

/** A P-256 public key as a JWK: exactly what the gateway and the key log hold. */
export interface PublicJwk {
  kty: 'EC';
  crv: 'P-256';
  x: string;
  y: string;
}

/** A checked public key: its JWK, its thumbprint and its Web Crypto forms. */
export interface PublicKey {
  jwk: PublicJwk;
  thumbprint: string;
}

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const ECDH = { name: 'ECDH', namedCurve: 'P-256' } as const;

/** RFC 7638 thumbprint (SHA-256, base64url) of a P-256 JWK. */
export async function thumbprint(jwk: PublicJwk): Promise<string> {
  const canonical = `{"crv":"P-256","kty":"EC","x":"${jwk.x}","y":"${jwk.y}"}`;
  return b64url(await sha256(utf8.encode(canonical)));
}

/** The SEC1 uncompressed point of a JWK whose coordinates are 32 bytes each. */
function sec1(jwk: PublicJwk): Uint8Array | undefined {
  const x = unb64url(jwk.x);
  const y = unb64url(jwk.y);
  if (!x || !y || x.length !== 32 || y.length !== 32) return undefined;
  const point = new Uint8Array(65);
  point[0] = 4;
  point.set(x, 1);
  point.set(y, 33);
  return point;
}

/**
 * Checks `value` is a P-256 public JWK whose point is on the curve; returns the key or
 * undefined. Members other than kty/crv/x/y (say `alg`, `use`) are dropped.
 */
export async function checkPublicJwk(value: unknown): Promise<PublicKey | undefined> {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (v.kty !== 'EC' || v.crv !== 'P-256' || typeof v.x !== 'string' || typeof v.y !== 'string') return undefined;
  if ('d' in v) return undefined;
  const jwk: PublicJwk = { kty: 'EC', crv: 'P-256', x: v.x, y: v.y };
  const point = sec1(jwk);
  if (!point) return undefined;
  try {
    // Web Crypto refuses a point that is not on the curve.
    await crypto.subtle.importKey('raw', buf(point), ECDH, false, []);
  } catch {
    return undefined;
  }
  return { jwk, thumbprint: await thumbprint(jwk) };
}

/** Like [`checkPublicJwk`], throwing an EnvelopeError `invalid-point` naming `what`. */
export async function envelopeKey(value: unknown, what: string): Promise<PublicKey> {
  const key = await checkPublicJwk(value);
  if (!key) throw new EnvelopeError('invalid-point', `${what} is not a P-256 point`);
  return key;
}

/** Like [`checkPublicJwk`], throwing a DirectoryError `malformed`. */
export async function directoryKey(value: unknown, what: string): Promise<PublicKey> {
  const key = await checkPublicJwk(value);
  if (!key) throw new DirectoryError('malformed', `${what} is not a P-256 public key`);
  return key;
}

export function sameKey(a: PublicKey, b: PublicKey): boolean {
  return a.jwk.x === b.jwk.x && a.jwk.y === b.jwk.y;
}

export function importVerifyKey(jwk: PublicJwk): Promise<CryptoKey> {
  return crypto.subtle.importKey('jwk', { ...jwk, ext: true }, ECDSA, false, ['verify']);
}

export function importEcdhPublic(jwk: PublicJwk): Promise<CryptoKey> {
  return crypto.subtle.importKey('jwk', { ...jwk, ext: true }, ECDH, true, []);
}

export { ECDH, ECDSA };
