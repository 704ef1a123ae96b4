// The other side of the envelope interop test: seals and opens icbt envelopes with the
// npm `jose` library only, as a browser client would. One JSON request on stdin, one
// JSON answer on stdout.
//
//   seal: {payload_b64, binding, sender: private JWK, recipients: [public JWK]}
//         -> {envelope: <JWE general JSON>}
//   open: {envelope, recipient: private JWK, sender: public JWK}
//         -> {payload_b64, binding}
import * as jose from 'jose';

const ENVELOPE_TYP = 'icbt-envelope+jwe';
const MESSAGE_TYP = 'icbt-message+jws';

async function seal({ payload_b64, binding, sender, recipients }) {
  const signingKey = await jose.importJWK({ ...sender, alg: 'ES256' }, 'ES256');
  const kid = await jose.calculateJwkThumbprint(sender, 'sha256');
  const jws = await new jose.CompactSign(Buffer.from(payload_b64, 'base64url'))
    .setProtectedHeader({ alg: 'ES256', kid, typ: MESSAGE_TYP, ...binding })
    .sign(signingKey);
  const jwe = new jose.GeneralEncrypt(new TextEncoder().encode(jws))
    .setProtectedHeader({ enc: 'A256GCM', typ: ENVELOPE_TYP, cty: MESSAGE_TYP, ...binding });
  for (const recipient of recipients) {
    const key = await jose.importJWK(recipient, 'ECDH-ES+A256KW');
    jwe.addRecipient(key).setUnprotectedHeader({
      alg: 'ECDH-ES+A256KW',
      kid: await jose.calculateJwkThumbprint(recipient, 'sha256'),
    });
  }
  return { envelope: await jwe.encrypt() };
}

async function open({ envelope, recipient, sender }) {
  const key = await jose.importJWK(recipient, 'ECDH-ES+A256KW');
  const { plaintext, protectedHeader } = await jose.generalDecrypt(envelope, key, {
    keyManagementAlgorithms: ['ECDH-ES+A256KW'],
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  const senderKey = await jose.importJWK(sender, 'ES256');
  const { payload, protectedHeader: inner } = await jose.compactVerify(
    new TextDecoder().decode(plaintext),
    senderKey,
    { algorithms: ['ES256'] },
  );
  for (const field of ['icbt_episode', 'icbt_message', 'icbt_kind', 'icbt_sender']) {
    if (inner[field] !== protectedHeader[field]) throw new Error(`binding mismatch: ${field}`);
  }
  if (inner.kid !== (await jose.calculateJwkThumbprint(sender, 'sha256'))) {
    throw new Error('signer is not the sender');
  }
  const binding = Object.fromEntries(
    ['icbt_episode', 'icbt_message', 'icbt_kind', 'icbt_sender'].map((f) => [f, inner[f]]),
  );
  return { payload_b64: Buffer.from(payload).toString('base64url'), binding };
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const command = process.argv[2];
try {
  const answer = command === 'seal' ? await seal(request) : await open(request);
  process.stdout.write(JSON.stringify(answer));
} catch (error) {
  process.stderr.write(`${error.code ?? 'ERROR'}: ${error.message}\n`);
  process.exit(1);
}
