-- User secrets, sealed with AES-256-GCM under the master key named by key_id.
-- Associated data binds each ciphertext to its row: secret:{app_id}:{name}.

CREATE TABLE secrets (
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, name)
);

-- The start-up key check and `keys rotate` look rows up by key id.
CREATE INDEX secrets_key_id ON secrets (key_id);
