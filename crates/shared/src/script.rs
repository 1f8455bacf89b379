//! The compile check a script service needs before it stores a script.

/// Where and why a script failed to compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct CompileError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// Compiles script source without running it; implemented by the executor.
pub trait ScriptCompiler: Send + Sync {
    /// `Ok` when `source` compiles, else the first error with its position.
    fn check(&self, source: &str) -> Result<(), CompileError>;
}
