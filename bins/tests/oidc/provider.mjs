// A local OpenID provider for bins/tests/oidc.rs: oidc-provider (a certified OpenID Connect
// implementation) with one confidential client and three people, whom the test signs in
// without a browser through the login form below.
//
//   node provider.mjs <redirect URI>
//
// prints "ready <port>" once it answers on 127.0.0.1:<port> (the issuer is
// http://127.0.0.1:<port>), and ends when its stdin closes (the test is over).
//
// The people's `role` claim is in the ID token (scope `flowbot`): alice's names the
// admins' group, bob's the editors', mallory's a group the server maps to no role.
import crypto from 'node:crypto';
import http from 'node:http';
import readline from 'node:readline';

import Provider from 'oidc-provider';

const CLIENT_ID = 'flowbot';
const CLIENT_SECRET = 'flowbot-test-client-secret';

const PEOPLE = {
  alice: { email: 'alice@example.com', name: 'Alice', role: ['staff', 'flowbot-admins'] },
  bob: { email: 'bob@example.com', name: 'Bob', role: 'flowbot-editors' },
  mallory: { email: 'mallory@example.com', name: 'Mallory', role: 'strangers' },
};

const redirectUri = process.argv[2];
if (!redirectUri) {
  process.stderr.write('usage: node provider.mjs <redirect URI>\n');
  process.exit(2);
}

let provider = null;
let issuer = null;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The interaction pages: a login form (GET) and its submission (POST …/login).
async function interaction(req, res, uid, submitted) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    res.writeHead(400).end('interaction mismatch');
    return;
  }
  if (!submitted) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>Sign in</title>
<form method="post" action="/interaction/${escape(uid)}/login">
<input name="login" autofocus> <button>Sign in</button></form>
<p>prompt: ${escape(details.prompt.name)}</p>`);
    return;
  }
  const login = (await body(req)).get('login');
  if (!Object.hasOwn(PEOPLE, login ?? '')) {
    res.writeHead(400, { 'content-type': 'text/plain' }).end(`no person '${login}'`);
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: login } }, {
    mergeWithLastSubmission: false,
  });
}

const server = http.createServer((req, res) => {
  if (!provider) {
    res.writeHead(503).end('not ready');
    return;
  }
  const path = new URL(req.url, issuer).pathname;
  const m = path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (m) {
    const submitted = Boolean(m[2]);
    if (submitted !== (req.method === 'POST')) {
      res.writeHead(405).end();
      return;
    }
    interaction(req, res, m[1], submitted).catch((e) => {
      res.writeHead(400, { 'content-type': 'text/plain' }).end(String(e));
    });
    return;
  }
  provider.callback()(req, res);
});

function start() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const key = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key', use: 'sig', alg: 'RS256' };
  provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      redirect_uris: [redirectUri],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [key] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      flowbot: ['role'],
    },
    scopes: ['openid', 'email', 'profile', 'flowbot'],
    // The people's claims go into the ID token, not only to the userinfo endpoint.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, i) => `/interaction/${i.uid}` },
    pkce: { required: () => true },
    async findAccount(_ctx, id) {
      const person = PEOPLE[id];
      if (!person) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, email_verified: true, ...person }) };
    },
    // The server is a first-party client: consent is granted without asking.
    async loadExistingGrant(ctx) {
      const { client, session } = ctx.oidc;
      const known = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (known) return ctx.oidc.provider.Grant.find(known);
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      grant.addOIDCScope('openid email profile flowbot');
      grant.addOIDCClaims(['email', 'email_verified', 'name', 'role']);
      await grant.save();
      return grant;
    },
  });
}

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  start();
  process.stdout.write(`ready ${port}\n`);
  // The test ended: so does the provider.
  readline.createInterface({ input: process.stdin }).once('close', () => process.exit(0));
});
