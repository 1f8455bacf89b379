//! picloud-manager-core: PostgreSQL repositories and the services built on them.
//!
//! Repositories (`repo`) hold SQL only and take any executor (pool, connection
//! or transaction), so a service can put several writes in one transaction.
//! Services (`service`) hold the rules: validation, limits, error mapping.

pub mod email;
pub mod error;
pub mod repo;
pub mod sealed;
pub mod service;

pub use error::ManagerError;

/// The embedded migrations; the server, the CLI and `#[sqlx::test]` all use this one.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
