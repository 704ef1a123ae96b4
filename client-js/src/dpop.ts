// DPoP proofs (RFC 9449) made with a non-extractable P-256 key: one fresh proof per
// request, bound to the method, the URL without query, the access token's hash and, when
// the gateway asks for one, its nonce.

import { b64url, buf, randomBytes, sha256, utf8 } from './encoding.js';
import { ECDSA, type PublicJwk, thumbprint } from './jwk.js';

export class DpopKey {
  private constructor(
    private readonly privateKey: CryptoKey,
    readonly jwk: PublicJwk,
    readonly thumbprint: string,
  ) {}

  /** A new key whose private half cannot be read out of Web Crypto. */
  static async generate(): Promise<DpopKey> {
    const pair = await crypto.subtle.generateKey(ECDSA, false, ['sign', 'verify']);
    return DpopKey.fromPair(pair.privateKey, pair.publicKey);
  }

  /** From a key pair an app keeps itself (say in IndexedDB). */
  static async fromPair(privateKey: CryptoKey, publicKey: CryptoKey): Promise<DpopKey> {
    const exported = await crypto.subtle.exportKey('jwk', publicKey);
    const jwk: PublicJwk = { kty: 'EC', crv: 'P-256', x: exported.x!, y: exported.y! };
    return new DpopKey(privateKey, jwk, await thumbprint(jwk));
  }

  /** From a PKCS#8 P-256 key, as `icbt-gateway dev token` writes; imported non-extractable. */
  static async fromPkcs8(der: Uint8Array): Promise<DpopKey> {
    const readable = await crypto.subtle.importKey('pkcs8', buf(der), ECDSA, true, ['sign']);
    const full = await crypto.subtle.exportKey('jwk', readable);
    const privateKey = await crypto.subtle.importKey('pkcs8', buf(der), ECDSA, false, ['sign']);
    const jwk: PublicJwk = { kty: 'EC', crv: 'P-256', x: full.x!, y: full.y! };
    return new DpopKey(privateKey, jwk, await thumbprint(jwk));
  }

  /** A proof for one request. */
  async proof(method: string, url: string | URL, accessToken?: string, nonce?: string): Promise<string> {
    const target = new URL(url);
    target.search = '';
    target.hash = '';
    const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: this.jwk };
    const claims: Record<string, unknown> = {
      jti: b64url(randomBytes(16)),
      htm: method.toUpperCase(),
      htu: target.toString(),
      iat: Math.floor(Date.now() / 1000),
    };
    if (accessToken !== undefined) claims.ath = b64url(await sha256(utf8.encode(accessToken)));
    if (nonce !== undefined) claims.nonce = nonce;
    const input = `${b64url(utf8.encode(JSON.stringify(header)))}.${b64url(utf8.encode(JSON.stringify(claims)))}`;
    const signature = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, this.privateKey, buf(utf8.encode(input)));
    return `${input}.${b64url(new Uint8Array(signature))}`;
  }
}
