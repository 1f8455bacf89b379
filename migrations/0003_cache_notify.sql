-- Cache invalidation across processes: every change to a row that a picloud process
-- caches in memory announces itself on channel `picloud_cache`. Triggers, not
-- application code, so every writer is covered (the admin API, the CLI, a future
-- code path, an operator's SQL) and the notification is sent exactly when the change
-- commits. Payloads are small JSON objects; `crates/picloud/src/cache_sync.rs` reads them.

CREATE FUNCTION picloud_notify_api_key_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('picloud_cache',
        json_build_object('kind', 'api_key', 'id', OLD.id)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- Only what authentication depends on: a key's existence and its scopes.
CREATE TRIGGER api_keys_cache_notify
    AFTER DELETE OR UPDATE OF key_digest, scopes ON api_keys
    FOR EACH ROW EXECUTE FUNCTION picloud_notify_api_key_change();

CREATE FUNCTION picloud_notify_script_change() RETURNS trigger AS $$
DECLARE
    names TEXT[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        names := ARRAY[OLD.name, NEW.name];
    ELSE
        names := ARRAY[OLD.name];
    END IF;
    PERFORM pg_notify('picloud_cache',
        json_build_object('kind', 'script', 'app_id', OLD.app_id, 'names', names)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER scripts_cache_notify
    AFTER UPDATE OR DELETE ON scripts
    FOR EACH ROW EXECUTE FUNCTION picloud_notify_script_change();

CREATE FUNCTION picloud_notify_app_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('picloud_cache',
        json_build_object('kind', 'app', 'app_id', OLD.id)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER apps_cache_notify
    AFTER DELETE ON apps
    FOR EACH ROW EXECUTE FUNCTION picloud_notify_app_change();
