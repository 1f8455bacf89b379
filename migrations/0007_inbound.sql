-- Inbound email (SPEC §7): what a trigger accepted, for 24 hours, so a
-- provider's retry (same webhook-id or message_id) is answered with the first
-- event and enqueues nothing.
CREATE TABLE inbound_deliveries (
    trigger_id   UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    dedupe_key   TEXT NOT NULL,
    event_id     BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (trigger_id, dedupe_key)
);
CREATE INDEX inbound_deliveries_by_age ON inbound_deliveries (created_at);

-- An app's inbound secret, for its per-app endpoint (POST /api/v1/apps/{app_id}/email-inbound),
-- sealed with the associated data `inbound-app:{app_id}`. No row: unsigned.
CREATE TABLE app_inbound_secrets (
    app_id      UUID PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
