/** The SDKs' connector config: `{name: {client_id, client_secret, auth_url, refresh_url, refresh_token, ...}}`. */
export type ConnectionConfig = Record<string, Record<string, string | number>>;

/** A token with its times and API domain. */
export interface TokenInfo {
  accessToken: string;
  expiresAt: Date;
  refreshAt: Date;
  apiDomain?: string;
}

/** What a code exchange gave. */
export interface GeneratedTokens extends TokenInfo {
  /** The refresh token Zoho issued (kept in the token store too). */
  refreshToken?: string;
}

/** A connector's state (times in epoch milliseconds). */
export interface ConnectorStatus {
  name: string;
  state: 'empty' | 'fresh' | 'stale' | 'expired';
  expiresAt: number | null;
  refreshAt: number | null;
  nextAttemptAt: number | null;
  refreshing: boolean;
  mintsInWindow: number;
  mintLimit: number;
  waiters: number;
  lastError: { code: string; message: string; at: number } | null;
  recordedFailure: { code: string; message: string; at: number; nextAttemptAt: number | null } | null;
}

/**
 * An error of the library. `code` is stable: `config`, `unknown_connector`,
 * `missing_refresh_token`, `reauthorization_required`, `invalid_client`, `throttled`,
 * `transient`, `tls`, `malformed_response`, `rejected`, `store`, `encryption_key`,
 * `sdk_secret_key`, `lifetime_too_short`, `deadline_exceeded`, `invalid_user`, `invalid_state`,
 * `store_open`, `http_client`. The message says what to do; it never holds a secret.
 */
export declare class ConnectorError extends Error {
  readonly code: string;
}

export declare class Connector {
  /** The connector's name. */
  readonly connectorName: string;
  /** A valid access token. */
  getAccessToken(): Promise<string>;
  /** A valid access token with its times and API domain. */
  accessToken(): Promise<TokenInfo>;
  /** Exchanges a grant code; the refresh token becomes this connector's. */
  generateAccessToken(code: string): Promise<GeneratedTokens>;
  /** Reports a token an API refused (401); resolves to whether it was current. */
  invalidate(accessToken: string): Promise<boolean>;
  /** The connector's state. */
  status(): Promise<ConnectorStatus>;
  /** The connector of one of this template's users. */
  forUser(userId: string): Connector;
}

export declare class Connection {
  /** The connector `name`. */
  getConnector(name: string): Connector;
}

export declare class App {
  /** Whether tokens are kept in a Catalyst project's cache. */
  readonly isCatalyst: boolean;
  /** A connection from a config object, its JSON text, or a .json/.toml file path. */
  connection(config: ConnectionConfig | string): Connection;
}

/** A request (or its headers) carrying Catalyst's `x-zc-*` credentials. */
export type CatalystRequest = { headers: Record<string, string | string[] | undefined> } | Record<string, string>;

/** An app, as the Catalyst SDKs' `initialize(req)`. */
export declare function initialize(req?: CatalystRequest): App;
