//! The compile check a script service needs before it stores a script.

use crate::ids::AppId;
use crate::ServiceError;
use async_trait::async_trait;

/// Where and why a script failed to compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct CompileError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// Why a compile check gave no verdict or a negative one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The source does not compile (or took longer than the compile time bound).
    #[error(transparent)]
    Compile(CompileError),
    /// The check was refused before compiling: source above the size limit
    /// (`TooLarge`), or no script worker free (`Unavailable`).
    #[error(transparent)]
    Refused(ServiceError),
}

/// Compiles script source without running it; implemented by the executor.
#[async_trait]
pub trait ScriptCompiler: Send + Sync {
    /// `Ok` when `source` compiles, else the first error with its position.
    /// Runs on the script pool, counted against `app`.
    async fn check(&self, app: AppId, source: &str) -> Result<(), CheckError>;
}
