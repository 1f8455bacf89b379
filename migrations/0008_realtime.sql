-- Realtime (SPEC §9). picloud's own per-app keys: the realtime signing key,
-- sealed with the associated data `realtime:{app_id}`, created on first use.
-- `realtime_key` is where older installs kept the key in plaintext: reads
-- prefer the sealed columns and fall back to it, and a start-up task seals
-- every plaintext-only row (the column stays for a later migration to drop).
-- After a rotation the previous key stays valid until `previous_until`.
CREATE TABLE app_secrets (
    app_id               UUID PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    realtime_key         BYTEA,
    realtime_key_id      TEXT,
    realtime_nonce       BYTEA,
    realtime_ciphertext  BYTEA,
    previous_key_id      TEXT,
    previous_nonce       BYTEA,
    previous_ciphertext  BYTEA,
    previous_until       TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Realtime messages too large for a NOTIFY payload (8,000 bytes): the
-- notification carries the row's id. Forgotten after a minute.
CREATE TABLE realtime_messages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id      UUID NOT NULL,
    topic       TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX realtime_messages_by_age ON realtime_messages (created_at);
