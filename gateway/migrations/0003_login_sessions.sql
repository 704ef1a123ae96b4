-- Hosted login: attempts in flight (single use, short-lived) and sessions.

CREATE TABLE login_attempts (
    state         TEXT PRIMARY KEY,
    issuer        TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    expires_at    BIGINT NOT NULL
);

-- `id_hash` is the SHA-256 of the cookie value: the database never holds a usable cookie.
CREATE TABLE sessions (
    id_hash         TEXT PRIMARY KEY,
    issuer          TEXT NOT NULL,
    principal       TEXT NOT NULL,
    id_token        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    idle_timeout    BIGINT NOT NULL,
    absolute_expiry BIGINT NOT NULL
);

CREATE INDEX sessions_by_expiry ON sessions (absolute_expiry);
