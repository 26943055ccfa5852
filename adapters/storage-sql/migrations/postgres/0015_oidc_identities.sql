-- OIDC sign-in: the accounts at OpenID Providers that sign in as users, keyed by issuer and subject (an email
-- at the provider can change; this pair cannot), and the sign-ins in progress (single use: the callback
-- deletes its row; rows older than their expiry are swept).

CREATE TABLE oidc_identities (
    issuer TEXT COLLATE "C" NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT oidc_identities_pkey PRIMARY KEY (issuer, subject)
);
CREATE INDEX oidc_identities_user_id ON oidc_identities (user_id, created_at);

CREATE TABLE oidc_flows (
    state TEXT NOT NULL,
    -- SHA-256 (hex) of the random value in the browser's flow cookie
    binding_hash TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    -- the signed-in user linking an identity; NULL for a sign-in
    link_user UUID REFERENCES users (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT oidc_flows_pkey PRIMARY KEY (state)
);
CREATE INDEX oidc_flows_expires_at ON oidc_flows (expires_at);
