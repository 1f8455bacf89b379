//! picloud: the server binary's library — configuration, the HTTP app,
//! the embedded PostgreSQL, start-up and shutdown.
//!
//! `main.rs` is a thin CLI over this library; integration tests drive
//! `http::build_app` directly against a real database.

pub mod cache_sync;
pub mod config;
pub mod connections;
pub mod database;
pub mod dispatcher;
pub mod email_config;
pub mod embedded_pg;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod realtime;
pub mod scheduler;
pub mod script_cache;
pub mod server;

pub use http::{build_app, build_app_with_caches};
