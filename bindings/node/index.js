'use strict';
// catalyst-connectors for Node.js: the Catalyst SDKs' connector API on a Rust core.
//
//   const catalyst = require('catalyst-connectors');
//   const app = catalyst.initialize(req);          // req optional: a Catalyst request's x-zc-* headers
//   const crm = app.connection({crm: {client_id, client_secret, auth_url, refresh_url, refresh_token}})
//                  .getConnector('crm');
//   const token = await crm.getAccessToken();
//
// One token request per expiry however many callers (in this process, and across processes
// and hosts sharing a store), refreshed in the background before it is due; errors are `Error`s
// with the library's `.code` (`reauthorization_required`, `throttled`, `transient`, ...).

const native = require('./native.js');

const ERROR_MARKER = 'CCERR';

/** An error of the library: `.code` is its stable code; the message says what to do. */
class ConnectorError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ConnectorError';
    this.code = code;
  }
}

/** The library's error for a native error, unchanged for anything else. */
function convert(e) {
  if (e && typeof e.message === 'string' && e.message.startsWith(ERROR_MARKER)) {
    try {
      const body = JSON.parse(e.message.slice(ERROR_MARKER.length));
      return new ConnectorError(body.code, body.message);
    } catch (_) {
      return e;
    }
  }
  return e;
}

function call(fn) {
  try {
    return fn();
  } catch (e) {
    throw convert(e);
  }
}

async function callAsync(promise) {
  try {
    return await promise;
  } catch (e) {
    throw convert(e);
  }
}

/** The token with its expiry, refresh point (`Date`s) and API domain. */
function tokenInfo(t) {
  return {
    accessToken: t.accessToken,
    expiresAt: new Date(t.expiresAt),
    refreshAt: new Date(t.refreshAt),
    apiDomain: t.apiDomain === null ? undefined : t.apiDomain,
  };
}

class Connector {
  constructor(nativeConnector) {
    this._native = nativeConnector;
    // The token and its refresh point, as the native connector last gave them: served without
    // crossing into native code until the refresh point (the native side refreshes by then).
    this._token = undefined;
    this._refreshAt = 0;
  }

  /** Keeps a token the native connector gave, when it is before its refresh point. */
  _keep(t) {
    if (Date.now() < t.refreshAt) {
      this._token = t.accessToken;
      this._refreshAt = t.refreshAt;
    } else {
      this._token = undefined;
    }
    return t;
  }

  /** The connector's name. */
  get connectorName() {
    return this._native.name;
  }

  /** A valid access token (a Promise of the string), as the SDKs' `getAccessToken()`. */
  getAccessToken() {
    if (this._token !== undefined && Date.now() < this._refreshAt) {
      return Promise.resolve(this._token);
    }
    const fresh = this._native.freshToken();
    if (fresh !== null) {
      return Promise.resolve(this._keep(fresh).accessToken);
    }
    return callAsync(this._native.accessToken()).then((t) => this._keep(t).accessToken);
  }

  /** A valid access token with `expiresAt`, `refreshAt` and `apiDomain`. */
  async accessToken() {
    return tokenInfo(this._keep(await callAsync(this._native.accessToken())));
  }

  /**
   * Exchanges a grant code for tokens; the refresh token becomes this connector's (kept in the
   * token store) and is returned with the access token, as `{accessToken, refreshToken, ...}`.
   * Like the SDKs, the Promise resolves to the access token when used as `await
   * generateAccessToken(code)` in string context: use `.accessToken` for clarity.
   */
  async generateAccessToken(code) {
    const t = this._keep(await callAsync(this._native.generateAccessToken(String(code))));
    return { ...tokenInfo(t), refreshToken: t.refreshToken === null ? undefined : t.refreshToken };
  }

  /**
   * Reports a token an API refused with 401: it is replaced once, however many callers report
   * it; a token already replaced is not replaced again. Resolves to whether it was current.
   */
  invalidate(accessToken) {
    if (this._token === String(accessToken)) {
      this._token = undefined;
    }
    return callAsync(this._native.invalidate(String(accessToken)));
  }

  /** The connector's state: token times, refresh, mints in the window, last error. */
  async status() {
    return JSON.parse(await callAsync(this._native.status()));
  }

  /** The connector of one of this template's users (its own refresh token and token). */
  forUser(userId) {
    const id = String(userId);
    if (this._users === undefined) {
      this._users = new Map();
    }
    let c = this._users.get(id);
    if (c === undefined) {
      // Bounded like the native side's resident users: a new object reloads from the store.
      if (this._users.size >= 10000) {
        this._users.clear();
      }
      c = new Connector(call(() => this._native.forUser(id)));
      this._users.set(id, c);
    }
    return c;
  }
}

class Connection {
  constructor(nativeConnection) {
    this._native = nativeConnection;
    this._connectors = new Map();
  }

  /** The connector `name` (one object per name: all its callers share one token). */
  getConnector(name) {
    let c = this._connectors.get(name);
    if (c === undefined) {
      c = new Connector(call(() => this._native.connector(String(name))));
      this._connectors.set(name, c);
    }
    return c;
  }
}

class App {
  constructor(headers) {
    this._native = call(() => new native.NativeApp(headers));
  }

  /** Whether tokens are kept in the Catalyst project's cache of the request given. */
  get isCatalyst() {
    return this._native.isCatalyst;
  }

  /**
   * A connection from a config: an object of the SDKs' shape
   * (`{crm: {client_id, client_secret, auth_url, refresh_url, refresh_token}}`), its JSON text,
   * or the path of a .json or .toml file.
   */
  connection(config) {
    if (typeof config === 'string' && !config.trimStart().startsWith('{')) {
      return new Connection(call(() => this._native.connection(config, true)));
    }
    const json = typeof config === 'string' ? config : JSON.stringify(config);
    return new Connection(call(() => this._native.connection(json, false)));
  }
}

/** Lower-case `x-zc-*` headers of a request (Node's `IncomingMessage`, Express, or a plain object). */
function catalystHeaders(req) {
  const raw = req && (req.headers || req);
  if (!raw || typeof raw !== 'object') {
    return undefined;
  }
  const out = {};
  const entries = typeof raw.entries === 'function' && !Array.isArray(raw) ? raw.entries() : Object.entries(raw);
  for (const [name, value] of entries) {
    const key = String(name).toLowerCase();
    if (key.startsWith('x-zc-') && value !== undefined && value !== null) {
      out[key] = Array.isArray(value) ? String(value[0]) : String(value);
    }
  }
  return out;
}

/**
 * An app, as the Catalyst SDKs' `initialize(req)`: with a Catalyst request, its connections
 * keep tokens in that project's Catalyst Cache (shared with its Node and Python functions);
 * without one, in the stores every program on this host shares (`$connector` settings,
 * `CONNECTOR_STORE`, SQLite by default) — with the `connector` CLI, its agent and Rust services.
 */
function initialize(req) {
  return new App(catalystHeaders(req));
}

module.exports = { initialize, App, Connection, Connector, ConnectorError };
