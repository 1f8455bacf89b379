//! The invoke path's cache of scripts by (app, name).
//!
//! An invoke must not wait on the database: scripts are looked up here, and
//! loaded once on a miss. Admin writes in this process update it at once.
//! The compiled AST lives in the executor's cache keyed by (id, version).

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

/// Scripts by app and name.
#[derive(Clone, Default)]
pub struct ScriptCache {
    apps: Arc<RwLock<HashMap<AppId, ByName>>>,
}

impl ScriptCache {
    /// The cached script, if present.
    pub fn get(&self, app: AppId, name: &str) -> Option<Arc<CachedScript>> {
        self.apps.read().ok()?.get(&app)?.get(name).cloned()
    }

    /// Caches a script under its name.
    pub fn insert(&self, app: AppId, script: Arc<CachedScript>) {
        if let Ok(mut apps) = self.apps.write() {
            apps.entry(app)
                .or_default()
                .insert(script.handle.name.clone(), script);
        }
    }

    /// Forgets one name of an app.
    pub fn remove(&self, app: AppId, name: &str) {
        if let Ok(mut apps) = self.apps.write() {
            if let Some(by_name) = apps.get_mut(&app) {
                by_name.remove(name);
            }
        }
    }

    /// Forgets every script of an app.
    pub fn remove_app(&self, app: AppId) {
        if let Ok(mut apps) = self.apps.write() {
            apps.remove(&app);
        }
    }
}
