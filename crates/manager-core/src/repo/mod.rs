//! Repositories: SQL only, one module per table family.

pub mod api_keys;
pub mod apps;
pub mod dead_letters;
pub mod email;
pub mod inbound;
pub mod kv;
pub mod outbox;
pub mod realtime;
pub mod scripts;
pub mod secrets;
pub mod triggers;
