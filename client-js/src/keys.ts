// A device's two key pairs, as non-extractable Web Crypto keys: ES256 for signing what it
// sends, ECDH P-256 for opening what is sealed to it. Its id is the RFC 7638 thumbprint of
// the signing key, so the gateway cannot pair an id with another key.

import { b64url, buf, utf8 } from './encoding.js';
import { EnvelopeError } from './errors.js';
import { ECDH, ECDSA, type PublicJwk, thumbprint } from './jwk.js';
import { parseStrict } from './json.js';

/** A device's keys. The private halves never leave Web Crypto unless made extractable. */
export interface DeviceKeys {
  /** RFC 7638 thumbprint of the signing key. */
  deviceId: string;
  /** RFC 7638 thumbprint of the encryption key. */
  encryptionKid: string;
  signingJwk: PublicJwk;
  encryptionJwk: PublicJwk;
  /** ECDSA P-256 private key, usage `sign`. */
  signingKey: CryptoKey;
  /** ECDH P-256 private key, usage `deriveBits`. */
  decryptionKey: CryptoKey;
}

function publicOf(jwk: JsonWebKey): PublicJwk {
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.x || !jwk.y) {
    throw new EnvelopeError('unsupported', 'unsupported key type: only EC P-256');
  }
  return { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y };
}

async function assemble(signing: CryptoKeyPair, encryption: CryptoKeyPair): Promise<DeviceKeys> {
  const signingJwk = publicOf(await crypto.subtle.exportKey('jwk', signing.publicKey));
  const encryptionJwk = publicOf(await crypto.subtle.exportKey('jwk', encryption.publicKey));
  return {
    deviceId: await thumbprint(signingJwk),
    encryptionKid: await thumbprint(encryptionJwk),
    signingJwk,
    encryptionJwk,
    signingKey: signing.privateKey,
    decryptionKey: encryption.privateKey,
  };
}

/**
 * New device keys. By default the private keys are non-extractable: they can be kept in
 * IndexedDB (which stores the CryptoKey itself) but never read out. `extractable` is for
 * a key file ([`toPrivateJson`]), as the Node key store writes.
 */
export async function generateDeviceKeys(options: { extractable?: boolean } = {}): Promise<DeviceKeys> {
  const extractable = options.extractable ?? false;
  const signing = await crypto.subtle.generateKey(ECDSA, extractable, ['sign', 'verify']);
  const encryption = await crypto.subtle.generateKey(ECDH, extractable, ['deriveBits']);
  return assemble(signing, encryption);
}

async function importPair(jwk: JsonWebKey, algorithm: typeof ECDSA | typeof ECDH): Promise<CryptoKeyPair> {
  const isSigning = algorithm.name === 'ECDSA';
  const privateKey = await crypto.subtle.importKey(
    'jwk',
    { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d, ext: false },
    algorithm,
    false,
    isSigning ? ['sign'] : ['deriveBits'],
  );
  const publicKey = await crypto.subtle.importKey(
    'jwk',
    { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, ext: true },
    algorithm,
    true,
    isSigning ? ['verify'] : [],
  );
  return { privateKey, publicKey };
}

/**
 * Device keys from the key file the Rust `icbt keygen` writes (`{"signing": JWK,
 * "encryption": JWK}` with private `d`): one device can be used from either SDK. The
 * imported private keys are non-extractable.
 */
export async function fromPrivateJson(text: string): Promise<DeviceKeys> {
  let stored: unknown;
  try {
    stored = parseStrict(text);
  } catch {
    throw new EnvelopeError('malformed', 'malformed: device key file');
  }
  const s = stored as { signing?: JsonWebKey; encryption?: JsonWebKey };
  if (!s.signing?.d || !s.encryption?.d) throw new EnvelopeError('malformed', 'malformed: device key file');
  try {
    return await assemble(await importPair(s.signing, ECDSA), await importPair(s.encryption, ECDH));
  } catch (e) {
    if (e instanceof EnvelopeError) throw e;
    throw new EnvelopeError('malformed', 'malformed: device key file');
  }
}

/** The key file of extractable device keys, in the Rust SDK's format. */
export async function toPrivateJson(keys: DeviceKeys): Promise<string> {
  if (!keys.signingKey.extractable || !keys.decryptionKey.extractable) {
    throw new EnvelopeError('crypto', 'these device keys are non-extractable and cannot be written to a file');
  }
  const pick = (jwk: JsonWebKey) => ({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d });
  return JSON.stringify(
    {
      signing: pick(await crypto.subtle.exportKey('jwk', keys.signingKey)),
      encryption: pick(await crypto.subtle.exportKey('jwk', keys.decryptionKey)),
    },
    null,
    2,
  );
}

/**
 * The body of `PUT /v1/devices/{id}`, with the proof the gateway asks for that the
 * publisher holds the signing key: a compact JWS (ES256, `typ` `icbt-device-proof+jwt`)
 * signed with it over the device id, the encryption key's thumbprint, the expiry and now.
 */
export async function deviceBody(keys: DeviceKeys, expiresAtMs: number, nowMs: number = Date.now()): Promise<object> {
  const part = (value: object) => b64url(utf8.encode(JSON.stringify(value)));
  const input = `${part({ alg: 'ES256', typ: 'icbt-device-proof+jwt', kid: keys.deviceId })}.${part({
    device_id: keys.deviceId,
    encryption_kid: keys.encryptionKid,
    expires_at_ms: expiresAtMs,
    iat: Math.floor(nowMs / 1000),
  })}`;
  const signature = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, keys.signingKey, buf(utf8.encode(input)));
  const proof = `${input}.${b64url(new Uint8Array(signature))}`;
  return { signing_jwk: keys.signingJwk, encryption_jwk: keys.encryptionJwk, expires_at_ms: expiresAtMs, proof };
}
