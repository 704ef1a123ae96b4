// Sealed envelopes (docs/envelope.md): an ES256 compact JWS of the payload, bound to its
// episode, message id, kind and sending device, encrypted as a JWE (JSON general
// serialization, A256GCM) to every recipient's P-256 key with ECDH-ES+A256KW. Web Crypto
// does every primitive; the parsing is as strict as the Rust side's.

import { EnvelopeError } from './errors.js';
import { b64url, buf, concat, fromUtf8, randomBytes, unb64url, utf8 } from './encoding.js';
import { ECDH, ECDSA, envelopeKey, importEcdhPublic, importVerifyKey, type PublicKey } from './jwk.js';
import { hasExactly, isObject, parseStrict } from './json.js';
import type { DeviceKeys } from './keys.js';

export const ENVELOPE_TYP = 'icbt-envelope+jwe';
export const MESSAGE_TYP = 'icbt-message+jws';
const ENC = 'A256GCM';
const ALG = 'ECDH-ES+A256KW';

/** `message`, `feedback`, `questionnaire-response` or `notice`. */
export type Kind = 'message' | 'feedback' | 'questionnaire-response' | 'notice';

/** What an envelope is bound to; in both the JWE's and the JWS's protected headers. */
export interface Binding {
  /** Episode id (UUID, lower case). */
  episode: string;
  /** The message id the client PUTs it under. */
  message: string;
  kind: string;
  /** The sending device's id (its signing key's thumbprint). */
  sender: string;
}

export interface Limits {
  maxBytes: number;
  maxRecipients: number;
}

export const DEFAULT_LIMITS: Limits = { maxBytes: 1024 * 1024, maxRecipients: 64 };

/** An opened envelope: the binding and the payload, signature and binding checked. */
export interface Opened {
  binding: Binding;
  payload: Uint8Array;
}

function malformed(what: string): EnvelopeError {
  return new EnvelopeError('malformed', `malformed: ${what}`);
}

function unsupported(field: string, supported: string): EnvelopeError {
  return new EnvelopeError('unsupported', `unsupported ${field}: only ${supported}`);
}

function bytesOf(text: unknown, what: string): Uint8Array {
  const bytes = typeof text === 'string' ? unb64url(text) : undefined;
  if (!bytes) throw malformed(`${what} is not base64url`);
  return bytes;
}

function bindingHeader(b: Binding): Record<string, string> {
  return { icbt_episode: b.episode, icbt_message: b.message, icbt_kind: b.kind, icbt_sender: b.sender };
}

const BINDING_FIELDS = [
  ['episode', 'icbt_episode'],
  ['message', 'icbt_message'],
  ['kind', 'icbt_kind'],
  ['sender', 'icbt_sender'],
] as const;

function bindingOf(header: Record<string, unknown>): Binding | undefined {
  const values = BINDING_FIELDS.map(([, member]) => header[member]);
  if (!values.every((v) => typeof v === 'string')) return undefined;
  const [episode, message, kind, sender] = values as string[];
  return { episode: episode!, message: message!, kind: kind!, sender: sender! };
}

/** Concat KDF of RFC 7518 §4.6.2 for ECDH-ES+A256KW: the 256-bit key-wrapping key. */
async function kek(z: ArrayBuffer, usage: 'wrapKey' | 'unwrapKey'): Promise<CryptoKey> {
  const be32 = (n: number) => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const alg = utf8.encode(ALG);
  const input = concat(be32(1), new Uint8Array(z), be32(alg.length), alg, be32(0), be32(0), be32(256));
  const derived = await crypto.subtle.digest('SHA-256', buf(input));
  return crypto.subtle.importKey('raw', derived, 'AES-KW', false, [usage]);
}

/** ES256 compact JWS of `payload` with the binding in its protected header. */
async function sign(payload: Uint8Array, binding: Binding, sender: DeviceKeys): Promise<string> {
  if (binding.sender !== sender.deviceId) throw new EnvelopeError('binding-mismatch', 'the inner and outer headers disagree on sender');
  const header = { alg: 'ES256', kid: sender.deviceId, typ: MESSAGE_TYP, ...bindingHeader(binding) };
  const input = `${b64url(utf8.encode(JSON.stringify(header)))}.${b64url(payload)}`;
  const signature = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, sender.signingKey, buf(utf8.encode(input)));
  return `${input}.${b64url(new Uint8Array(signature))}`;
}

/**
 * Seals `payload` from `sender` to `recipients` (their encryption keys), bound to
 * `binding`. Returns the envelope's JSON bytes. Sealing is randomised: the same payload
 * sealed twice gives two different envelopes, so a retry resends the first one.
 */
export async function seal(
  payload: Uint8Array,
  binding: Binding,
  sender: DeviceKeys,
  recipients: readonly PublicKey[],
): Promise<Uint8Array> {
  const jws = await sign(payload, binding, sender);
  if (recipients.length === 0) throw malformed('no recipients');
  const cek = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt']);
  const kids = new Set<string>();
  const entries = [];
  for (const recipient of recipients) {
    if (kids.has(recipient.thumbprint)) throw new EnvelopeError('duplicate-recipient', 'the same recipient key appears twice');
    kids.add(recipient.thumbprint);
    const ephemeral = await crypto.subtle.generateKey(ECDH, true, ['deriveBits']);
    const z = await crypto.subtle.deriveBits({ name: 'ECDH', public: await importEcdhPublic(recipient.jwk) }, ephemeral.privateKey, 256);
    const wrapped = await crypto.subtle.wrapKey('raw', cek, await kek(z, 'wrapKey'), 'AES-KW');
    const epk = await crypto.subtle.exportKey('jwk', ephemeral.publicKey);
    entries.push({
      header: { alg: ALG, kid: recipient.thumbprint, epk: { kty: 'EC', crv: 'P-256', x: epk.x, y: epk.y } },
      encrypted_key: b64url(new Uint8Array(wrapped)),
    });
  }
  const protectedB64 = b64url(utf8.encode(JSON.stringify({ enc: ENC, typ: ENVELOPE_TYP, cty: MESSAGE_TYP, ...bindingHeader(binding) })));
  const iv = randomBytes(12);
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: 'AES-GCM', iv: buf(iv), additionalData: buf(utf8.encode(protectedB64)) }, cek, buf(utf8.encode(jws))),
  );
  const wire = {
    protected: protectedB64,
    recipients: entries,
    iv: b64url(iv),
    ciphertext: b64url(sealed.subarray(0, sealed.length - 16)),
    tag: b64url(sealed.subarray(sealed.length - 16)),
  };
  return utf8.encode(JSON.stringify(wire));
}

interface RecipientEntry {
  kid: string;
  epk: PublicKey;
  encryptedKey: Uint8Array;
}

/** A parsed envelope: what the gateway can see of it, and the means to open it. */
export class Envelope {
  private constructor(
    private readonly protectedB64: string,
    readonly binding: Binding,
    readonly recipients: readonly RecipientEntry[],
    private readonly iv: Uint8Array,
    private readonly ciphertext: Uint8Array,
    private readonly tag: Uint8Array,
  ) {}

  /** Parses within `limits`; every object is closed and duplicate members are refused. */
  static async parse(bytes: Uint8Array, limits: Limits = DEFAULT_LIMITS): Promise<Envelope> {
    if (bytes.length > limits.maxBytes) throw new EnvelopeError('too-large', `the envelope is larger than ${limits.maxBytes} bytes`);
    let wire: unknown;
    try {
      wire = parseStrict(fromUtf8(bytes) ?? '');
    } catch {
      throw malformed('envelope JSON');
    }
    if (!hasExactly(wire, ['protected', 'recipients', 'iv', 'ciphertext', 'tag'])) throw malformed('envelope JSON');
    const list = wire.recipients;
    if (!Array.isArray(list) || typeof wire.protected !== 'string' || typeof wire.iv !== 'string' || typeof wire.ciphertext !== 'string' || typeof wire.tag !== 'string') {
      throw malformed('envelope JSON');
    }
    if (list.length === 0) throw malformed('no recipients');
    if (list.length > limits.maxRecipients) throw new EnvelopeError('too-many-recipients', `the envelope has more than ${limits.maxRecipients} recipients`);
    let header: unknown;
    try {
      header = parseStrict(fromUtf8(bytesOf(wire.protected, 'protected header')) ?? '');
    } catch (e) {
      if (e instanceof EnvelopeError) throw e;
      throw malformed('protected header');
    }
    if (!hasExactly(header, ['enc', 'typ', 'cty', 'icbt_episode', 'icbt_message', 'icbt_kind', 'icbt_sender'])) throw malformed('protected header');
    const binding = bindingOf(header);
    if (!binding || typeof header.enc !== 'string' || typeof header.typ !== 'string' || typeof header.cty !== 'string') throw malformed('protected header');
    if (header.enc !== ENC) throw unsupported('enc', ENC);
    if (header.typ !== ENVELOPE_TYP || header.cty !== MESSAGE_TYP) throw malformed('protected header typ or cty');
    const kids = new Set<string>();
    const recipients: RecipientEntry[] = [];
    for (const entry of list) {
      if (!hasExactly(entry, ['header', 'encrypted_key']) || !hasExactly(entry.header, ['alg', 'kid', 'epk'])) throw malformed('envelope JSON');
      const h = entry.header;
      if (typeof h.alg !== 'string' || typeof h.kid !== 'string' || typeof entry.encrypted_key !== 'string') throw malformed('envelope JSON');
      if (!hasExactly(h.epk, ['kty', 'crv', 'x', 'y']) || !Object.values(h.epk).every((v) => typeof v === 'string')) throw malformed('envelope JSON');
      if (h.alg !== ALG) throw unsupported('alg', ALG);
      if (h.kid.length === 0 || h.kid.length > 100) throw malformed('recipient kid');
      if (kids.has(h.kid)) throw new EnvelopeError('duplicate-recipient', 'the same recipient key appears twice');
      kids.add(h.kid);
      if (h.epk.kty !== 'EC' || h.epk.crv !== 'P-256') throw unsupported('epk', 'EC P-256');
      const epk = await envelopeKey(h.epk, 'epk');
      const encryptedKey = bytesOf(entry.encrypted_key, 'encrypted_key');
      if (encryptedKey.length !== 40) throw malformed('encrypted_key is not 40 bytes');
      recipients.push({ kid: h.kid, epk, encryptedKey });
    }
    const iv = bytesOf(wire.iv, 'iv');
    if (iv.length !== 12) throw malformed('iv is not 12 bytes');
    const tag = bytesOf(wire.tag, 'tag');
    if (tag.length !== 16) throw malformed('tag is not 16 bytes');
    return new Envelope(wire.protected, binding, recipients, iv, bytesOf(wire.ciphertext, 'ciphertext'), tag);
  }

  /** Decrypts with this device's key and parses the inner JWS; the signature is not yet checked. */
  async decrypt(keys: DeviceKeys): Promise<SignedMessage> {
    const entry = this.recipients.find((r) => r.kid === keys.encryptionKid);
    if (!entry) throw new EnvelopeError('not-a-recipient', 'no recipient entry for this key');
    let plain: Uint8Array;
    try {
      const z = await crypto.subtle.deriveBits({ name: 'ECDH', public: await importEcdhPublic(entry.epk.jwk) }, keys.decryptionKey, 256);
      const cek = await crypto.subtle.unwrapKey('raw', buf(entry.encryptedKey), await kek(z, 'unwrapKey'), 'AES-KW', 'AES-GCM', false, ['decrypt']);
      plain = new Uint8Array(
        await crypto.subtle.decrypt(
          { name: 'AES-GCM', iv: buf(this.iv), additionalData: buf(utf8.encode(this.protectedB64)) },
          cek,
          buf(concat(this.ciphertext, this.tag)),
        ),
      );
    } catch {
      throw new EnvelopeError('decrypt', 'the envelope does not decrypt with this key');
    }
    const text = fromUtf8(plain);
    if (text === undefined) throw malformed('inner JWS');
    const signed = SignedMessage.parse(text);
    for (const [field] of BINDING_FIELDS) {
      if (signed.binding[field] !== this.binding[field]) {
        throw new EnvelopeError('binding-mismatch', `the inner and outer headers disagree on ${field}`);
      }
    }
    return signed;
  }

  /** Decrypts, checks the binding, and verifies the signature with the sender's key. */
  async open(keys: DeviceKeys, sender: PublicKey): Promise<Opened> {
    const signed = await this.decrypt(keys);
    await signed.verify(sender);
    return { binding: signed.binding, payload: signed.payload };
  }
}

/** The inner signed message. */
export class SignedMessage {
  private constructor(
    readonly binding: Binding,
    readonly kid: string,
    private readonly signingInput: string,
    private readonly signature: Uint8Array,
    readonly payload: Uint8Array,
  ) {}

  static parse(compact: string): SignedMessage {
    const parts = compact.split('.');
    if (parts.length !== 3) throw malformed('inner JWS is not three base64url parts');
    const [h, p, s] = parts.map((part) => unb64url(part));
    if (!h || !p || !s) throw malformed('inner JWS is not three base64url parts');
    let header: unknown;
    try {
      header = parseStrict(fromUtf8(h) ?? '');
    } catch {
      throw malformed('inner JWS header');
    }
    if (!isObject(header)) throw malformed('inner JWS header');
    if ('crit' in header) throw malformed('inner JWS header');
    if (header.alg !== 'ES256') throw unsupported('JWS alg', 'ES256');
    if (!hasExactly(header, ['alg', 'kid', 'typ', 'icbt_episode', 'icbt_message', 'icbt_kind', 'icbt_sender'])) throw malformed('inner JWS header');
    const binding = bindingOf(header);
    if (!binding || typeof header.kid !== 'string' || typeof header.typ !== 'string') throw malformed('inner JWS header');
    if (header.typ !== MESSAGE_TYP) throw malformed('inner JWS typ');
    if (header.kid !== binding.sender) throw new EnvelopeError('binding-mismatch', 'the inner and outer headers disagree on sender');
    if (s.length !== 64) throw new EnvelopeError('bad-signature', "the sender's signature does not verify");
    return new SignedMessage(binding, header.kid, `${parts[0]}.${parts[1]}`, s, p);
  }

  /** Verifies with `key`, which must be the device the header names. */
  async verify(key: PublicKey): Promise<void> {
    if (key.thumbprint !== this.kid) throw new EnvelopeError('unknown-signer', `the signer ${this.kid} is not a known device of the sender`);
    const ok = await crypto.subtle.verify(
      { name: 'ECDSA', hash: 'SHA-256' },
      await importVerifyKey(key.jwk),
      buf(this.signature),
      buf(utf8.encode(this.signingInput)),
    );
    if (!ok) throw new EnvelopeError('bad-signature', "the sender's signature does not verify");
  }
}

export { ECDSA };
