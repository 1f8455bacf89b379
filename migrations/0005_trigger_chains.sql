-- Bounds on what trigger chains can do to the database (issue #15's attack review).

-- A chain is every event descending from one root event (an event enqueued by an
-- HTTP invoke, a cron tick or a replay). A root event has no chain_id: its own id
-- names the chain. Derived events carry the root's id.
ALTER TABLE outbox ADD COLUMN chain_id BIGINT;
ALTER TABLE dead_letters ADD COLUMN chain_id BIGINT;

-- Events enqueued by the handlers of each chain, against PICLOUD_MAX_CHAIN_EVENTS
-- (a chain's width, where PICLOUD_MAX_TRIGGER_DEPTH bounds its depth). A chain
-- that enqueued nothing for a day is forgotten by the dispatcher's housekeeping.
CREATE TABLE trigger_chains (
    chain_id       BIGINT PRIMARY KEY,
    events         BIGINT NOT NULL,
    last_event_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX trigger_chains_by_activity ON trigger_chains (last_event_at);

-- The outbox event a replay enqueued: a second replay is refused while it is pending.
ALTER TABLE dead_letters ADD COLUMN replay_outbox_id BIGINT;

-- Queue tables churn: every event is an insert, an update or two and a delete.
-- Vacuum them after a fixed number of dead rows rather than a fraction of the
-- table, at full speed, so a long drain does not leave the table mostly dead tuples.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE trigger_chains SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
