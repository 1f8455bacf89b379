-- Triggers, the transactional outbox and dead letters (SPEC §8).

CREATE TABLE triggers (
    id                  UUID PRIMARY KEY,
    app_id              UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    script_id           UUID NOT NULL REFERENCES scripts(id) ON DELETE CASCADE,
    kind                TEXT NOT NULL CHECK (kind IN ('kv', 'cron', 'pubsub', 'email', 'dead_letter')),
    -- The public config (never a secret), as the API shows it.
    config              JSONB NOT NULL,
    max_attempts        INT NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    backoff             TEXT NOT NULL CHECK (backoff IN ('exponential', 'fixed')),
    base_ms             BIGINT NOT NULL CHECK (base_ms BETWEEN 1 AND 3600000),
    -- The API key that registered it: the origin principal of the events it starts.
    created_by          UUID,
    -- email: the inbound secret, sealed (AAD `inbound:{id}`); NULL when unsigned.
    inbound_key_id      TEXT,
    inbound_nonce       BYTEA,
    inbound_ciphertext  BYTEA,
    -- cron: the next tick to fire. A tick is claimed by moving this forward in the
    -- transaction that enqueues its event, so it fires once across processes.
    cron_next_at        TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((inbound_key_id IS NULL) = (inbound_ciphertext IS NULL))
);
CREATE INDEX triggers_by_app_kind ON triggers (app_id, kind);
CREATE INDEX triggers_cron_due ON triggers (cron_next_at) WHERE kind = 'cron';

CREATE TABLE outbox (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id            UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    trigger_id        UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    script_id         UUID NOT NULL,
    source_kind       TEXT NOT NULL,
    payload           JSONB NOT NULL,
    -- Runs made so far.
    attempts          INT NOT NULL DEFAULT 0,
    max_attempts      INT NOT NULL,
    backoff           TEXT NOT NULL,
    base_ms           BIGINT NOT NULL,
    -- Due when this has passed. A claim moves it to the lease's end, so a row
    -- whose process died becomes due again when its lease runs out.
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner       UUID,
    lease_until       TIMESTAMPTZ,
    -- When the handler of the current lease started (written in batches); a
    -- rescued row is charged an attempt only if its handler had started, or
    -- after several rescues (an event that kills its process before the mark).
    started_at        TIMESTAMPTZ,
    rescues           INT NOT NULL DEFAULT 0,
    trigger_depth     INT NOT NULL DEFAULT 0,
    origin_principal  UUID,
    first_attempt_at  TIMESTAMPTZ,
    last_error        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (next_attempt_at);
CREATE INDEX outbox_by_app ON outbox (app_id);

CREATE TABLE dead_letters (
    id                UUID PRIMARY KEY,
    app_id            UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    -- The trigger and script may have been deleted since.
    trigger_id        UUID,
    script_id         UUID,
    source_kind       TEXT NOT NULL,
    -- The event that failed, as it was enqueued.
    payload           JSONB NOT NULL,
    attempts          INT NOT NULL,
    last_error        TEXT NOT NULL,
    trigger_depth     INT NOT NULL,
    origin_principal  UUID,
    first_attempt_at  TIMESTAMPTZ NOT NULL,
    last_attempt_at   TIMESTAMPTZ NOT NULL,
    -- Set in the statement that enqueues its dead_letter triggers' events; a
    -- dispatcher sweeps rows left unset (a crash between the two commits).
    fanned_out        BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_by_app ON dead_letters (app_id, created_at DESC, id DESC);
CREATE INDEX dead_letters_to_fan_out ON dead_letters (created_at) WHERE NOT fanned_out;
