//! Services: the rules around each repository.

pub mod api_keys;
pub mod apps;
pub mod kv;
pub mod scripts;
pub mod secrets;
pub mod triggers;
