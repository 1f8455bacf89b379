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
