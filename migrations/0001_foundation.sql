-- Foundation: apps, scripts, API keys, kv.

CREATE TABLE apps (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE scripts (
    id          UUID PRIMARY KEY,
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    public      BOOLEAN NOT NULL DEFAULT false,
    version     BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (app_id, name)
);

CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    -- SHA-256 of the whole key: keys are 256-bit random, so a fast digest is right.
    key_digest    BYTEA NOT NULL UNIQUE,
    scopes        TEXT[] NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ
);

CREATE TABLE kv_entries (
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    collection  TEXT NOT NULL,
    -- COLLATE "C": listing is in ascending byte order whatever the database locale.
    key         TEXT COLLATE "C" NOT NULL,
    value       JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, collection, key)
);
