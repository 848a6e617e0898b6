-- agentaudit collector, PostgreSQL schema version 6: console sessions shared by every replica (docs/console.md).
-- Keep in step with ../sqlite/0006_console_sessions.sql. Written by gateway/console/auth.py.

-- Signed-in console operators. Only the SHA-256 of the cookie's session id is kept (like operator tokens), so a
-- copy of the table cannot be replayed as cookies. Any replica behind a load balancer answers for any session,
-- and signing out on one signs out everywhere.
CREATE TABLE console_sessions (
    sid_sha256          text PRIMARY KEY,   -- hex SHA-256 of the cookie value
    operator            text NOT NULL,      -- the identity signed in
    roles               text NOT NULL,      -- its roles at sign-in, comma-separated
    csrf                text NOT NULL,      -- the CSRF token its forms carry
    via                 text NOT NULL,      -- token | header | link
    opened_ms           bigint NOT NULL,
    expires_ms          bigint NOT NULL     -- wall clock: replicas share it
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_ms);

-- One-time sign-in links (agentaudit dev prints one): redeemed at most once, by whichever replica gets it.
CREATE TABLE console_links (
    link_sha256         text PRIMARY KEY,   -- hex SHA-256 of the link's secret
    operator            text NOT NULL,
    roles               text NOT NULL,
    expires_ms          bigint NOT NULL
);
