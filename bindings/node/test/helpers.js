'use strict';
// Test helpers: the workspace's zoho-emulator and connector binaries (built by
// `cargo build -p zoho-emulator -p connector-cli`, as .ci/run does), and temporary homes.

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const CLIENT_ID = '1000.NODE';
const CLIENT_SECRET = 'node-client-secret';

function bin(name) {
  const p = path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug', name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing: run \`cargo build -p zoho-emulator -p connector-cli\` first`);
  }
  return p;
}

/** Starts the emulator with our client; resolves to its controls. */
async function startEmulator(args = []) {
  const child = spawn(bin('zoho-emulator'), ['--client-id', CLIENT_ID, '--client-secret', CLIENT_SECRET, ...args], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const url = await new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => resolve(d.toString().split('\n')[0].trim()));
    child.once('exit', (code) => reject(new Error(`zoho-emulator exited (${code})`)));
  });
  const post = async (route, body) => {
    const r = await fetch(`${url}${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`${route}: HTTP ${r.status}`);
    return r.json().catch(() => ({}));
  };
  return {
    url,
    tokenUrl: `${url}/oauth/v2/token`,
    async refreshToken(scope = 'ZohoCRM.users.READ') {
      return (await post('/__emulator/refresh_tokens', { client_id: CLIENT_ID, scope })).refresh_token;
    },
    async requests() {
      return (await (await fetch(`${url}/__emulator/stats`)).json()).token_requests;
    },
    async revoke(token) {
      const r = await fetch(`${url}/oauth/v2/token/revoke?token=${encodeURIComponent(token)}`, { method: 'POST' });
      if (!r.ok) throw new Error(`revoke: HTTP ${r.status}`);
    },
    stop() {
      child.kill();
    },
  };
}

/** The SDK-shaped config of connector `name`. */
function config(emulator, refreshToken, name = 'crm') {
  return {
    [name]: {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      auth_url: emulator.tokenUrl,
      refresh_url: emulator.tokenUrl,
      refresh_token: refreshToken,
    },
  };
}

/** A fresh directory holding this test's token store, set as CONNECTOR_STORE. */
function freshStore() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cc-node-'));
  process.env.CONNECTOR_STORE = `sqlite:${path.join(dir, 'tokens.db')}`;
  return dir;
}

/** Runs the `connector` CLI; resolves to {code, stdout, stderr}. */
function cli(args, env = {}) {
  return new Promise((resolve) => {
    execFile(bin('connector'), args, { env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
  });
}

module.exports = { ROOT, CLIENT_ID, CLIENT_SECRET, bin, startEmulator, config, freshStore, cli };
