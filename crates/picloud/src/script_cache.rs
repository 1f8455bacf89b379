//! The invoke path's cache of scripts by (app, name).
//!
//! An invoke must not wait on the database: scripts are looked up here, and
//! loaded once on a miss. Admin writes update it at once in this process, and
//! through `cache_sync` in every other process on the same database.
//! The compiled AST lives in the executor's cache keyed by (id, version).
//!
//! A miss that loads from the database may race an invalidation: the load can
//! read the old row, the invalidation can run, and only then the load inserts.
//! So every invalidation bumps a generation, and a load inserts only if the
//! generation it saw before reading the database is still current.

use picloud_executor_core::ScriptHandle;
use picloud_shared::{domain::ScriptWithSource, ids::AppId};
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// A script ready to run.
pub struct CachedScript {
    pub handle: ScriptHandle,
    pub public: bool,
}

impl From<ScriptWithSource> for CachedScript {
    fn from(s: ScriptWithSource) -> Self {
        CachedScript {
            handle: ScriptHandle {
                id: s.script.id,
                version: s.script.version,
                name: s.script.name,
                source: s.source.into(),
            },
            public: s.script.public,
        }
    }
}

type ByName = HashMap<String, Arc<CachedScript>>;

#[derive(Default)]
struct Inner {
    apps: HashMap<AppId, ByName>,
    generation: u64,
}

/// Scripts by app and name.
#[derive(Clone, Default)]
pub struct ScriptCache {
    inner: Arc<RwLock<Inner>>,
}

/// Taken before a database load; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

impl ScriptCache {
    /// The cached script, if present.
    pub fn get(&self, app: AppId, name: &str) -> Option<Arc<CachedScript>> {
        self.inner.read().ok()?.apps.get(&app)?.get(name).cloned()
    }

    /// The generation to hand to [`ScriptCache::insert`] after a load.
    pub fn generation(&self) -> Generation {
        Generation(self.inner.read().map(|i| i.generation).unwrap_or(u64::MAX))
    }

    /// Caches a loaded script, unless an invalidation ran since `seen` was taken.
    pub fn insert(&self, app: AppId, script: Arc<CachedScript>, seen: Generation) {
        if let Ok(mut inner) = self.inner.write() {
            if inner.generation != seen.0 {
                return;
            }
            inner
                .apps
                .entry(app)
                .or_default()
                .insert(script.handle.name.clone(), script);
        }
    }

    /// Forgets one name of an app.
    pub fn remove(&self, app: AppId, name: &str) {
        self.invalidate(|apps| {
            if let Some(by_name) = apps.get_mut(&app) {
                by_name.remove(name);
            }
        });
    }

    /// Forgets every script of an app.
    pub fn remove_app(&self, app: AppId) {
        self.invalidate(|apps| {
            apps.remove(&app);
        });
    }

    /// Forgets everything (when invalidations from other processes may have been missed).
    pub fn clear(&self) {
        self.invalidate(HashMap::clear);
    }

    fn invalidate(&self, change: impl FnOnce(&mut HashMap<AppId, ByName>)) {
        if let Ok(mut inner) = self.inner.write() {
            change(&mut inner.apps);
            inner.generation = inner.generation.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picloud_shared::ids::ScriptId;

    fn script(name: &str, version: i64) -> Arc<CachedScript> {
        Arc::new(CachedScript {
            handle: ScriptHandle {
                id: ScriptId::new(),
                version,
                name: name.into(),
                source: "1".into(),
            },
            public: false,
        })
    }

    #[test]
    fn a_load_that_raced_an_invalidation_is_not_cached() {
        let cache = ScriptCache::default();
        let app = AppId::new();
        let seen = cache.generation();
        // The admin write lands while the load was reading the old row.
        cache.remove(app, "s");
        cache.insert(app, script("s", 1), seen);
        assert!(cache.get(app, "s").is_none(), "a stale row was cached");

        let seen = cache.generation();
        cache.insert(app, script("s", 2), seen);
        assert_eq!(cache.get(app, "s").unwrap().handle.version, 2);
    }

    #[test]
    fn remove_app_and_clear_forget_everything_they_cover() {
        let cache = ScriptCache::default();
        let (a, b) = (AppId::new(), AppId::new());
        for (app, name) in [(a, "x"), (a, "y"), (b, "x")] {
            let seen = cache.generation();
            cache.insert(app, script(name, 1), seen);
        }
        cache.remove_app(a);
        assert!(cache.get(a, "x").is_none() && cache.get(a, "y").is_none());
        assert!(cache.get(b, "x").is_some());
        cache.clear();
        assert!(cache.get(b, "x").is_none());
    }
}
