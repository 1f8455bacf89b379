-- Outbound email (SPEC §7): per-app policy, daily counts, idempotency keys.

-- An app without a row sends to anyone, without a cap.
CREATE TABLE email_policies (
    app_id      UUID PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    -- NULL: unrestricted; else a JSON array of lower-cased addresses and @domains.
    recipients  JSONB,
    daily_cap   INT CHECK (daily_cap >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Sends per app and UTC day. A send reserves a slot under the cap before it
-- talks to the relay and turns it into `sent` on success or gives it back on
-- failure, so concurrent sends from several processes cannot pass the cap and
-- only successes count.
CREATE TABLE email_daily_sends (
    app_id    UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    day       DATE NOT NULL,
    sent      INT NOT NULL DEFAULT 0 CHECK (sent >= 0),
    reserved  INT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (app_id, day)
);

-- idempotency_key → the first send's Message-ID, for 24 hours. `sent` is false
-- while that send is in progress (a second send with the key waits for it).
CREATE TABLE email_idempotency (
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    sent        BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);
CREATE INDEX email_idempotency_by_age ON email_idempotency (created_at);
