// Two real OpenID providers (npm oidc-provider) for the end-to-end tests, shaped like
// ID-porten and HelseID, on loopback HTTPS.
//
// Input (environment):
//   TLS_CERT, TLS_KEY   PEM files of the server certificate (the harness's test CA)
//   CLIENT_JWKS         JSON: { "<client_id>": <public JWK>, ... } for private_key_jwt
// Output: one JSON line on stdout once both listen:
//   { "idporten": { "issuer", "signing_jwk" }, "helseid": { ... } }
// The private signing JWKs are test keys; the harness uses them to forge tokens with
// claims a real provider would never issue (expired, wrong audience, ...).
//
// Logins need no browser: the login_hint names the account as base64url JSON, and the
// interaction is finished at once with that account and a grant of what was asked.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import { exportJWK, generateKeyPair } from 'jose';

const tls = { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) };
const clientJwks = JSON.parse(process.env.CLIENT_JWKS);

const ORG_PARENT = '974760673';
// Two hospitals of one deployment (the clinic-register tests).
const HOSPITAL_A = '983974899';
const HOSPITAL_B = '983975240';

function decodeAccount(accountId) {
  return JSON.parse(Buffer.from(accountId, 'base64url').toString('utf8'));
}

async function signingKey(alg, kid) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid, alg, use: 'sig' };
}

function client(clientId, extra = {}) {
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [clientJwks[clientId]] },
    grant_types: ['authorization_code', 'client_credentials'],
    response_types: ['code'],
    redirect_uris: ['https://platform.test/callback', 'https://gateway.test/auth/callback'],
    post_logout_redirect_uris: ['https://gateway.test/', 'https://platform.test/'],
    ...extra,
  };
}

// What each kind puts into access tokens, as the real providers document it.
const shapes = {
  idporten: {
    alg: 'RS256',
    resources: { 'https://icbt-gateway.test/api': 'icbt:messages' },
    clients: [client('icbt-platform', { scope: 'openid icbt:messages' }),
      client('icbt-gateway', { scope: 'openid icbt:messages' })],
    par: { enabled: true, requirePushedAuthorizationRequests: false },
    requireDpopNonce: false,
    accessTokenClaims(token, account) {
      return account ? { pid: account.pid, acr: account.acr } : {};
    },
  },
  helseid: {
    alg: 'ES256',
    resources: {
      'nhn:icbt-gateway': 'nhn:icbt-gateway/api nhn:icbt-gateway/audit',
      'nhn:epj': 'nhn:epj/write',
    },
    clients: [
      client('icbt-platform', {
        scope: 'openid nhn:icbt-gateway/api nhn:icbt-gateway/audit',
        orgnr_parent: ORG_PARENT,
      }),
      client('icbt-gateway', { scope: 'openid nhn:icbt-gateway/api nhn:epj/write', orgnr_parent: ORG_PARENT }),
      client('other-org-platform', { scope: 'nhn:icbt-gateway/api', orgnr_parent: '991056505' }),
      // Platforms acting for one hospital each, hospital B's own EPJ client, and hospital
      // A's security team's system (a SIEM reading the access log).
      client('platform-a', { scope: 'nhn:icbt-gateway/api', orgnr_parent: HOSPITAL_A }),
      client('platform-b', { scope: 'nhn:icbt-gateway/api', orgnr_parent: HOSPITAL_B }),
      client('gateway-b', { scope: 'nhn:epj/write', orgnr_parent: HOSPITAL_B }),
      client('audit-a', { scope: 'nhn:icbt-gateway/api nhn:icbt-gateway/audit', orgnr_parent: HOSPITAL_A }),
      // An RSA key: RS256 or PS256 assertions.
      client('icbt-gateway-rsa', {
        scope: 'nhn:icbt-gateway/api nhn:epj/write',
        orgnr_parent: ORG_PARENT,
        token_endpoint_auth_signing_alg: undefined,
      }),
    ],
    par: { enabled: true, requirePushedAuthorizationRequests: true },
    requireDpopNonce: true,
    accessTokenClaims(token, account, theClient) {
      const claims = {
        'helseid://claims/client/claims/orgnr_parent': theClient?.orgnr_parent,
        'helseid://claims/client/client_name': theClient?.clientId,
      };
      if (account) {
        claims['helseid://claims/identity/pid'] = account.pid;
        claims['helseid://claims/identity/security_level'] = String(account.security_level ?? 4);
        if (account.hpr) claims['helseid://claims/hpr/hpr_number'] = account.hpr;
      }
      return claims;
    },
  },
};

async function start(name) {
  const shape = shapes[name];
  const server = createServer(tls);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `https://127.0.0.1:${server.address().port}`;
  const key = await signingKey(shape.alg, `${name}-1`);

  const provider = new Provider(issuer, {
    clients: shape.clients
      .filter((c) => clientJwks[c.client_id])
      .map((c) => JSON.parse(JSON.stringify({ ...c, id_token_signed_response_alg: shape.alg }))),
    jwks: { keys: [key] },
    scopes: ['openid', 'offline_access', ...Object.values(shape.resources).flatMap((s) => s.split(' '))],
    extraClientMetadata: { properties: ['orgnr_parent'] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    clientAuthMethods: ['private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['ES256', 'RS256', 'PS256'],
      dPoPSigningAlgValues: ['ES256'],
      idTokenSigningAlgValues: [shape.alg],
    },
    // HelseID: assertions with aud = issuer and the client-authentication+jwt type.
    async assertJwtClientAuthClaimsAndHeader(ctx, claims, header) {
      if (name === 'helseid' && header.typ !== 'client-authentication+jwt') {
        throw new Error('client assertion typ must be client-authentication+jwt');
      }
    },
    pkce: { required: () => true },
    acrValues: ['idporten-loa-substantial', 'idporten-loa-high', 'Level4'],
    claims: { openid: ['sub'], acr: ['acr'] },
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP: {
        enabled: true,
        nonceSecret: randomBytes(32),
        requireNonce: () => shape.requireDpopNonce,
      },
      pushedAuthorizationRequests: shape.par,
      rpInitiatedLogout: { enabled: true, logoutSource: async (ctx, form) => { ctx.body = form; } },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, theClient, oneOf) => oneOf ?? Object.keys(shape.resources)[0],
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          const scope = shape.resources[resource];
          if (!scope) throw new errors.InvalidTarget();
          return {
            scope,
            audience: resource,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: shape.alg } },
          };
        },
      },
    },
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'AccessToken' && token.kind !== 'ClientCredentials') return undefined;
      const account = token.accountId ? decodeAccount(token.accountId) : undefined;
      const theClient = await ctx.oidc.provider.Client.find(token.clientId);
      return shape.accessTokenClaims(token, account, theClient);
    },
    ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
  });

  // Finishes every interaction at once with the account the login_hint names.
  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
    if (!match) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { params } = details;
    const accountId = params.login_hint;
    const account = decodeAccount(accountId);
    const grant = new provider.Grant({ accountId, clientId: params.client_id });
    const scopes = String(params.scope ?? '').split(' ');
    grant.addOIDCScope(scopes.join(' '));
    const resource = params.resource ?? Object.keys(shape.resources)[0];
    grant.addResourceScope(resource, scopes.filter((s) => s !== 'openid').join(' '));
    const grantId = await grant.save();
    const result = { login: { accountId, acr: account.acr ?? 'Level4' }, consent: { grantId } };
    const location = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(location);
  });

  provider.on('server_error', (ctx, err) => console.error(`${name} server_error`, err));
  // Why a request was refused, for the test's failure output.
  for (const event of ['grant.error', 'pushed_authorization_request.error', 'authorization.error']) {
    provider.on(event, (ctx, err) => console.error(`${name} ${event}: ${err.error}: ${err.error_detail ?? err.error_description ?? ''}`));
  }
  server.on('request', provider.callback());
  // Static clients are validated on first use; fail loudly at start instead.
  for (const c of shape.clients.filter((c) => clientJwks[c.client_id])) {
    try {
      if (!(await provider.Client.find(c.client_id))) throw new Error('not registered');
    } catch (err) {
      console.error(`${name}: client ${c.client_id} is invalid: ${err.error_description ?? err.message}`);
      process.exit(1);
    }
  }
  return { issuer, signing_jwk: key };
}

const [idporten, helseid] = await Promise.all([start('idporten'), start('helseid')]);
process.stdout.write(`${JSON.stringify({ idporten, helseid })}\n`);
// The harness holds our stdin open; when its process ends, so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
