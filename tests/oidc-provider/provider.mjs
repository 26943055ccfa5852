// A real OpenID Provider for the OIDC end-to-end tests (tests/e2e/oidc.rs): oidc-provider with one confidential
// client and the test's users, signing in through oidc-provider's development login and consent forms (any
// password; the login names the account). Configured by the environment:
//   OIDC_PORT           the loopback port to listen on (the issuer is http://127.0.0.1:<port>)
//   OIDC_CLIENT_ID      the client's id
//   OIDC_CLIENT_SECRET  its secret
//   OIDC_REDIRECT_URI   its one redirect URI (Gradient's callback)
//   OIDC_USERS          JSON: { "<login>": { "email": …, "email_verified": …, "name": …, … } }
// Prints "ready <issuer>" once it listens. Also serves a logo at /logo.svg (for Gradient's oidc.iconUrl).
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
};

const port = Number(env('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;
const users = JSON.parse(env('OIDC_USERS'));

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: env('OIDC_CLIENT_ID'),
      client_secret: env('OIDC_CLIENT_SECRET'),
      redirect_uris: [env('OIDC_REDIRECT_URI')],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  // Every authorization request must carry an S256 PKCE challenge.
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  async findAccount(_ctx, sub) {
    const user = users[sub];
    if (!user) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...user }) };
  },
  cookies: { keys: ['gradient-e2e-oidc-provider-cookie-signing-key'] },
  features: { devInteractions: { enabled: true } },
});

// The provider's logo, as a real provider would publish one.
provider.use(async (ctx, next) => {
  if (ctx.path !== '/logo.svg') return next();
  ctx.type = 'image/svg+xml';
  ctx.body =
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 20 20"><circle cx="10" cy="10" r="9" fill="#2a7ae2"/>' +
    '<path d="M6 10l3 3 5-6" stroke="#fff" stroke-width="2" fill="none"/></svg>';
});

provider.listen(port, '127.0.0.1').on('listening', () => console.log(`ready ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
