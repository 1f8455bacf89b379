//! [`PooledCompiler`]: the compile check of script saves, run on the script
//! pool so that compiling never occupies an async worker and counts against
//! the saving app's share of the pool.

use crate::pool::{Admission, ScriptPool};
use crate::Executor;
use async_trait::async_trait;
use picloud_shared::ids::AppId;
use picloud_shared::script::{CheckError, ScriptCompiler};
use picloud_shared::ServiceError;
use std::sync::Arc;

/// Compiles on the script pool with the executor's engine and limits.
#[derive(Clone)]
pub struct PooledCompiler {
    pool: ScriptPool,
    executor: Arc<Executor>,
}

impl PooledCompiler {
    /// A compiler submitting to `pool`.
    pub fn new(pool: ScriptPool, executor: Arc<Executor>) -> Self {
        Self { pool, executor }
    }
}

#[async_trait]
impl ScriptCompiler for PooledCompiler {
    async fn check(&self, app: AppId, source: &str) -> Result<(), CheckError> {
        // Refused before the copy to a worker: the size limit needs no worker.
        self.executor.check_source_size(source.len())?;
        let executor = self.executor.clone();
        let source = source.to_owned();
        self.pool
            .run(app, Admission::Reject, move || executor.check(&source))
            .await
            .map_err(|err| CheckError::Refused(ServiceError::Unavailable(err.to_string())))?
    }
}
