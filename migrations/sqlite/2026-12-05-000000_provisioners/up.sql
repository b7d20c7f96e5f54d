-- External token issuers (DESIGN.md "registered provisioners"): an
-- orchestrator holds a private key, the server its public key. Tokens a
-- provisioner signs are short-lived and single-use by `jti`: on first use
-- each is recorded in bootstrap_tokens (id: hex of the first 16 bytes of
-- SHA-256 over `provisioner:<name>:<jti>`; created_by `provisioner:<name>`;
-- max_uses 1), where the issuance transaction consumes it like any other.
CREATE TABLE provisioners (
    name            TEXT    NOT NULL PRIMARY KEY,
    -- SubjectPublicKeyInfo, PEM; its key type fixes the one JWS algorithm.
    public_key_pem  TEXT    NOT NULL,
    algorithm       TEXT    NOT NULL,
    -- The `kid` its tokens may carry (hex SHA-256 of the SPKI DER, 12 bytes).
    key_id          TEXT    NOT NULL,
    -- JSON array of the policy names its tokens may enroll under.
    policies_json   TEXT    NOT NULL,
    -- Longest exp - iat a token may have, seconds.
    max_token_ttl   BIGINT  NOT NULL CHECK (max_token_ttl >= 1),
    created_at      BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    disabled_at     BIGINT
);
