// A transparency-log witness for the publishing tests, written from the C2SP
// specifications alone (tlog-witness, tlog-cosignature, signed-note, RFC 9162 section
// 2.1.4.2 for consistency proofs) in Node's own crypto, so it shares no code with the
// gateway: if the gateway's notes, proofs or protocol were off, this refuses them.
//
// Input (environment):
//   TLS_CERT, TLS_KEY   PEM files of the server certificate
//   LOG_VKEY            the log's verifier key, <origin>+<hex id>+<base64(0x01 || key)>
//   WITNESS_NAME        the witness's key name (default witness.test/w1)
// Output: one JSON line on stdout once listening:
//   { "url": "https://127.0.0.1:PORT", "vkey": "<name>+<hex id>+<base64(0x04 || key)>" }
//
//   POST /add-checkpoint     the protocol: old size line, proof lines, blank line, note
//   GET  /admin/state        { size, root, cosigned, refused: [status…] }
//   POST /admin/state        { size, root }: pretend to have cosigned another tree (a
//                            witness that saw more than the log now shows)

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { createHash, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';

const tls = { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) };
const name = process.env.WITNESS_NAME ?? 'witness.test/w1';
const sha256 = (...parts) => createHash('sha256').update(Buffer.concat(parts)).digest();
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

// The log's key: origin, id and raw key, checked against each other.
const [logName, logId, logKeyB64] = (() => {
  const v = process.env.LOG_VKEY;
  const a = v.indexOf('+');
  const b = v.indexOf('+', a + 1);
  return [v.slice(0, a), v.slice(a + 1, b), v.slice(b + 1)];
})();
const logKeyRaw = Buffer.from(logKeyB64, 'base64');
if (logKeyRaw[0] !== 0x01 || logKeyRaw.length !== 33) throw new Error('LOG_VKEY is not an Ed25519 verifier key');
if (sha256(Buffer.from(`${logName}\n`), logKeyRaw).subarray(0, 4).toString('hex') !== logId) {
  throw new Error('LOG_VKEY: the id does not match the key');
}
const logKey = createPublicKey({ key: Buffer.concat([SPKI_ED25519, logKeyRaw.subarray(1)]), format: 'der', type: 'spki' });

// The witness's own key.
const { publicKey, privateKey } = generateKeyPairSync('ed25519');
const rawPub = publicKey.export({ format: 'der', type: 'spki' }).subarray(SPKI_ED25519.length);
const keyId = sha256(Buffer.from(`${name}\n`), Buffer.from([0x04]), rawPub).subarray(0, 4);
const vkey = `${name}+${keyId.toString('hex')}+${Buffer.concat([Buffer.from([0x04]), rawPub]).toString('base64')}`;

const state = { size: 0, root: null, cosigned: 0, refused: [] };

const node = (l, r) => sha256(Buffer.from([0x01]), l, r);
const lsb = (n) => (n & 1) === 1;

// RFC 9162, 2.1.4.2.
function consistent(first, second, firstRoot, secondRoot, path) {
  if (path.length === 0) return false;
  let p = path;
  if ((first & (first - 1)) === 0) p = [firstRoot, ...path];
  let fn = first - 1;
  let sn = second - 1;
  while (lsb(fn)) {
    fn >>= 1;
    sn >>= 1;
  }
  let fr = p[0];
  let sr = p[0];
  for (const c of p.slice(1)) {
    if (sn === 0) return false;
    if (lsb(fn) || fn === sn) {
      fr = node(c, fr);
      sr = node(c, sr);
      if (!lsb(fn)) {
        while (!lsb(fn) && fn !== 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      sr = node(sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return fr.equals(firstRoot) && sr.equals(secondRoot) && sn === 0;
}

function addCheckpoint(body) {
  const split = body.indexOf('\n\n');
  if (!body.startsWith('old ') || split < 0) return [400, 'malformed'];
  const head = body.slice(0, split).split('\n');
  const note = body.slice(split + 2);
  const old = head[0].slice(4);
  if (!/^(0|[1-9][0-9]*)$/.test(old)) return [400, 'bad old size'];
  const proof = head.slice(1).map((l) => Buffer.from(l, 'base64'));
  if (proof.length > 63 || proof.some((h) => h.length !== 32)) return [400, 'bad proof'];
  // The note: its text, a blank line, signature lines.
  const cut = note.lastIndexOf('\n\n');
  if (cut < 0 || !note.endsWith('\n')) return [400, 'not a note'];
  const text = note.slice(0, cut + 1);
  const lines = text.split('\n');
  if (lines.length < 4 || lines[0] !== logName) return [404, 'unknown log'];
  const size = lines[1];
  if (!/^(0|[1-9][0-9]*)$/.test(size)) return [400, 'bad size'];
  const root = Buffer.from(lines[2], 'base64');
  if (root.length !== 32) return [400, 'bad root'];
  const signed = note
    .slice(cut + 2, -1)
    .split('\n')
    .some((line) => {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!m || m[1] !== logName) return false;
      const blob = Buffer.from(m[2], 'base64');
      if (blob.subarray(0, 4).toString('hex') !== logId) return false;
      return verify(null, Buffer.from(text), logKey, blob.subarray(4));
    });
  if (!signed) return [403, 'no valid signature by the log'];
  const [o, n] = [Number(old), Number(size)];
  if (o > n) return [400, 'old size above the checkpoint size'];
  if (o !== state.size) return [409, `${state.size}\n`, 'text/x.tlog.size'];
  if (o === n) {
    if (state.root && !root.equals(state.root)) return [409, `${state.size}\n`, 'text/x.tlog.size'];
  } else if (o === 0 ? proof.length !== 0 : !consistent(o, n, state.root, root, proof)) {
    return [422, 'the consistency proof does not verify'];
  }
  state.size = n;
  state.root = root;
  state.cosigned += 1;
  const time = BigInt(Math.floor(Date.now() / 1000));
  const stamp = Buffer.alloc(8);
  stamp.writeBigUInt64BE(time);
  const signature = sign(null, Buffer.from(`cosignature/v1\ntime ${time}\n${text}`), privateKey);
  return [200, `\u2014 ${name} ${Buffer.concat([keyId, stamp, signature]).toString('base64')}\n`];
}

const server = createServer(tls, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    let answer;
    if (req.method === 'POST' && req.url === '/add-checkpoint') {
      answer = addCheckpoint(body);
      if (answer[0] !== 200) state.refused.push(answer[0]);
    } else if (req.url === '/admin/state' && req.method === 'GET') {
      answer = [200, JSON.stringify({ ...state, root: state.root?.toString('base64') ?? null }), 'application/json'];
    } else if (req.url === '/admin/state' && req.method === 'POST') {
      const set = JSON.parse(body);
      state.size = set.size;
      state.root = Buffer.from(set.root, 'base64');
      answer = [204, ''];
    } else {
      answer = [404, 'not found'];
    }
    const [status, text, type] = answer;
    res.writeHead(status, { 'content-type': type ?? 'text/plain; charset=utf-8' });
    res.end(text);
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ url: `https://127.0.0.1:${server.address().port}`, vkey })}\n`);
});
