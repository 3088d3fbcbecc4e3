'use strict';
// A cached getAccessToken(): ours against the official zcatalyst-sdk-node 3.4.0 connector's
// (interop/node, installed by `npm ci` there), side by side in one run, alternating rounds.
// Both hold a valid token in memory; each call is awaited. Prints ns per call, median of rounds.
//
//   npm run build && npm run bench        (the emulator binary must be built: cargo build -p zoho-emulator)

const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const catalyst = require('..');
const { startEmulator, config } = require('../test/helpers');

const sdk = require(path.join(__dirname, '..', '..', '..', 'interop', 'node', 'node_modules', 'zcatalyst-sdk-node'));

const CALLS = 1_000_000;
const ROUNDS = 7;

async function perCall(getAccessToken) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < CALLS; i++) {
    await getAccessToken();
  }
  return Number(process.hrtime.bigint() - start) / CALLS;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

(async () => {
  const emulator = await startEmulator();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cc-bench-'));
  process.env.CONNECTOR_STORE = `sqlite:${path.join(dir, 'tokens.db')}`;
  try {
    const ours = catalyst.initialize().connection(config(emulator, await emulator.refreshToken())).getConnector('crm');
    const token = await ours.getAccessToken();

    const app = sdk.initialize(
      { headers: { 'x-zc-projectid': '1', 'x-zc-project-key': 'k', 'x-zc-project-domain': 'd', 'x-zc-environment': 'Development',
        'x-zc-admin-cred-type': 'token', 'x-zc-admin-cred-token': 't', 'x-zc-user-cred-type': 'token', 'x-zc-user-cred-token': 't' } },
      { scope: 'admin' },
    );
    const theirs = app.connection(config(emulator, 'unused')).getConnector('crm');
    // Their cached path: a token in memory before its expiry.
    theirs.accessToken = token;
    theirs.expiresAt = Date.now() + 3_600_000;

    const a = [];
    const b = [];
    for (let r = 0; r < ROUNDS; r++) {
      a.push(await perCall(() => ours.getAccessToken()));
      b.push(await perCall(() => theirs.getAccessToken()));
    }
    console.log(`cached getAccessToken(), ${CALLS} awaited calls per round, ${ROUNDS} rounds (median ns/call):`);
    console.log(`  catalyst-connectors      ${median(a).toFixed(0)} ns   (rounds: ${a.map((x) => x.toFixed(0)).join(' ')})`);
    console.log(`  zcatalyst-sdk-node 3.4.0 ${median(b).toFixed(0)} ns   (rounds: ${b.map((x) => x.toFixed(0)).join(' ')})`);
  } finally {
    emulator.stop();
  }
})();
