'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const { execFileSync } = require('node:child_process');
const catalyst = require('..');
const { CLIENT_ID, CLIENT_SECRET, startEmulator, config, freshStore, cli } = require('./helpers');

delete process.env.CONNECTOR_AGENT;
delete process.env.CONNECTOR_ENCRYPTION_KEY;

test("the README's first example — the seed's snippet — prints a token from the emulator", async () => {
  const emulator = await startEmulator();
  try {
    const rt = await emulator.refreshToken();
    const dir = freshStore();
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    let snippet = readme.match(/```js\n([\s\S]*?)```/)[1];
    snippet = snippet
      .replace("require('catalyst-connectors')", `require(${JSON.stringify(path.join(__dirname, '..'))})`)
      .replace('{add_client_id}', CLIENT_ID)
      .replace('{add_client_secret}', CLIENT_SECRET)
      .replace('{add_auth_url}', emulator.tokenUrl)
      .replace('{add_refresh_url}', emulator.tokenUrl)
      .replace('{add_refresh_token}', rt);
    const out = execFileSync(process.execPath, ['-e', snippet], { cwd: dir, env: process.env }).toString().trim();
    assert.match(out, /^1000\./);
    assert.equal(await emulator.requests(), 1);
  } finally {
    emulator.stop();
  }
});

test('1,000 concurrent getAccessToken() calls on a cold connector cause 1 token request', async () => {
  const emulator = await startEmulator(['--latency-ms', '200']);
  try {
    freshStore();
    const crm = catalyst.initialize().connection(config(emulator, await emulator.refreshToken())).getConnector('crm');
    const tokens = await Promise.all(Array.from({ length: 1000 }, () => crm.getAccessToken()));
    assert.equal(new Set(tokens).size, 1);
    assert.equal(await emulator.requests(), 1);
    // Cached: no request, the same token, synchronously resolved.
    assert.equal(await crm.getAccessToken(), tokens[0]);
    assert.equal(await emulator.requests(), 1);
  } finally {
    emulator.stop();
  }
});

test('a token minted by `connector token` is served to Node without a request, and the other way round', async () => {
  const emulator = await startEmulator();
  try {
    const dir = freshStore();
    const file = path.join(dir, 'connectors.json');
    fs.writeFileSync(file, JSON.stringify(config(emulator, await emulator.refreshToken())));
    const byCli = await cli(['token', 'crm', '--config', file]);
    assert.equal(byCli.code, 0, byCli.stderr);
    const app = catalyst.initialize();
    assert.equal(await app.connection(file).getConnector('crm').getAccessToken(), byCli.stdout.trim());
    assert.equal(await emulator.requests(), 1);

    // The other way: Node mints on a new store, the CLI prints it.
    const other = freshStore();
    const file2 = path.join(other, 'connectors.json');
    fs.writeFileSync(file2, JSON.stringify(config(emulator, await emulator.refreshToken())));
    const byNode = await catalyst.initialize().connection(file2).getConnector('crm').getAccessToken();
    const back = await cli(['token', 'crm', '--config', file2]);
    assert.equal(back.stdout.trim(), byNode);
    assert.equal(await emulator.requests(), 2);
  } finally {
    emulator.stop();
  }
});

test('a revoked refresh token rejects with code reauthorization_required, and no secret anywhere', async () => {
  const emulator = await startEmulator();
  try {
    freshStore();
    const rt = await emulator.refreshToken();
    await emulator.revoke(rt);
    const crm = catalyst.initialize().connection(config(emulator, rt)).getConnector('crm');
    const err = await crm.getAccessToken().then(
      () => assert.fail('resolved'),
      (e) => e,
    );
    assert.ok(err instanceof Error && err instanceof catalyst.ConnectorError);
    assert.equal(err.code, 'reauthorization_required');
    assert.match(err.message, /re-authorize/);
    const shown = [err.message, err.stack, util.inspect(err), util.inspect(crm), JSON.stringify(crm)].join('\n');
    for (const secret of [rt, CLIENT_SECRET]) {
      assert.ok(!shown.includes(secret), `a secret leaked: ${shown}`);
    }
  } finally {
    emulator.stop();
  }
});

test('accessToken(), invalidate(), status() and forUser()', async () => {
  const emulator = await startEmulator();
  try {
    freshStore();
    const crm = catalyst.initialize().connection(config(emulator, await emulator.refreshToken())).getConnector('crm');
    const t = await crm.accessToken();
    assert.ok(t.expiresAt > t.refreshAt && t.refreshAt > new Date());
    assert.equal(typeof t.apiDomain, 'string');
    const reports = await Promise.all(Array.from({ length: 20 }, () => crm.invalidate(t.accessToken)));
    assert.equal(reports.filter(Boolean).length, 1, 'replaced once however many report it');
    const next = await crm.getAccessToken();
    assert.notEqual(next, t.accessToken);
    assert.equal(await crm.invalidate(t.accessToken), false, 'an old token is not replaced again');
    assert.equal(await emulator.requests(), 2);
    const status = await crm.status();
    assert.equal(status.name, 'crm');
    assert.equal(status.state, 'fresh');
    assert.equal(status.mintsInWindow, 2);
    const alice = crm.forUser('alice');
    assert.equal(alice.connectorName, 'crm.alice');
    await assert.rejects(alice.getAccessToken(), { code: 'missing_refresh_token' });
    assert.throws(() => catalyst.initialize().connection(config(emulator, 'x')).getConnector('nope'), {
      code: 'unknown_connector',
    });
  } finally {
    emulator.stop();
  }
});

test('initialize(req) keeps tokens in the Catalyst project of the request', async () => {
  const emulator = await startEmulator();
  try {
    freshStore();
    const adminRt = await emulator.refreshToken('ZohoCatalyst.cache.READ,ZohoCatalyst.cache.CREATE,ZohoCatalyst.cache.DELETE');
    const form = new URLSearchParams({ grant_type: 'refresh_token', client_id: CLIENT_ID, client_secret: CLIENT_SECRET, refresh_token: adminRt });
    const admin = (await (await fetch(emulator.tokenUrl, { method: 'POST', body: form })).json()).access_token;
    process.env.X_ZOHO_CATALYST_CONSOLE_URL = emulator.url;
    const req = {
      headers: {
        'x-zc-projectid': '4000000001234',
        'x-zc-environment': 'Development',
        'x-zc-admin-cred-type': 'token',
        'x-zc-admin-cred-token': admin,
        'content-type': 'application/json',
      },
    };
    const app = catalyst.initialize(req);
    assert.equal(app.isCatalyst, true);
    const cfg = config(emulator, await emulator.refreshToken());
    const token = await app.connection(cfg).getConnector('crm').getAccessToken();
    // Another function of the project (a new app, a cold process) reads it from the cache.
    const again = await catalyst.initialize(req).connection(cfg).getConnector('crm').getAccessToken();
    assert.equal(again, token);
    assert.equal(await emulator.requests(), 2, 'one for the admin token, one for crm');
    assert.equal(catalyst.initialize().isCatalyst, false);
    assert.throws(() => catalyst.initialize({ headers: { 'x-zc-projectid': '1' } }), { code: 'config' });
  } finally {
    delete process.env.X_ZOHO_CATALYST_CONSOLE_URL;
    emulator.stop();
  }
});
