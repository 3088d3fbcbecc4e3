// Gets a connector's access token with the official Catalyst Node SDK, against the emulator's
// Catalyst Cache (X_ZOHO_CATALYST_CONSOLE_URL). Configuration comes from the environment; prints
// `TOKEN <access token>`. Used by crates/catalyst-connectors/tests/catalyst.rs.
const catalyst = require('zcatalyst-sdk-node');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

(async () => {
  const admin = env('INTEROP_ADMIN_TOKEN');
  const app = catalyst.initialize({
    headers: {
      'x-zc-projectid': env('INTEROP_PROJECT'),
      'x-zc-project-key': 'interop',
      'x-zc-project-domain': 'interop',
      'x-zc-environment': process.env.INTEROP_ENVIRONMENT || 'Development',
      'x-zc-admin-cred-type': 'token',
      'x-zc-admin-cred-token': admin,
      'x-zc-user-cred-type': 'token',
      'x-zc-user-cred-token': admin,
    },
  }, { scope: 'admin' });
  const name = env('INTEROP_CONNECTOR');
  const connection = app.connection({
    [name]: {
      client_id: env('INTEROP_CLIENT_ID'),
      client_secret: env('INTEROP_CLIENT_SECRET'),
      auth_url: env('INTEROP_TOKEN_URL'),
      refresh_url: env('INTEROP_TOKEN_URL'),
      refresh_token: env('INTEROP_REFRESH_TOKEN'),
    },
  });
  const token = await connection.getConnector(name).getAccessToken();
  console.log(`TOKEN ${token}`);
})().catch((e) => {
  console.error(`node sdk failed: ${e && e.message}`);
  process.exit(1);
});
