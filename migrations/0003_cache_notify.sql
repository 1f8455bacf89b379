-- Cache invalidation across processes: every change to a row that a picloud process
-- caches in memory announces itself on channel `picloud_cache`. Triggers, not
-- application code, so every writer is covered (the admin API, the CLI, a future
-- code path, an operator's SQL, TRUNCATE) and the notification is sent exactly when the
-- change commits. Payloads are small JSON objects; `crates/picloud/src/cache_sync.rs`
-- reads them. (Sessions with `session_replication_role = replica`, as pg_restore uses,
-- fire no triggers: restart the servers after such a restore.)

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
        json_build_object('kind', 'script', 'app_id', OLD.app_id, 'id', OLD.id,
                          'names', names)::text);
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

-- Compiled scripts are cached by (id, version): a source change must bump the version,
-- also when a writer other than picloud forgets to.
CREATE FUNCTION picloud_bump_script_version() RETURNS trigger AS $$
BEGIN
    IF NEW.source IS DISTINCT FROM OLD.source AND NEW.version = OLD.version THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER scripts_bump_version
    BEFORE UPDATE ON scripts
    FOR EACH ROW EXECUTE FUNCTION picloud_bump_script_version();

-- TRUNCATE fires no row triggers: drop everything.
CREATE FUNCTION picloud_notify_truncate() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('picloud_cache', json_build_object('kind', 'all')::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_cache_notify_truncate
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION picloud_notify_truncate();

CREATE TRIGGER scripts_cache_notify_truncate
    AFTER TRUNCATE ON scripts
    FOR EACH STATEMENT EXECUTE FUNCTION picloud_notify_truncate();

CREATE TRIGGER apps_cache_notify_truncate
    AFTER TRUNCATE ON apps
    FOR EACH STATEMENT EXECUTE FUNCTION picloud_notify_truncate();
