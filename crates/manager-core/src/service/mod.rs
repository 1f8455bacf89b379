//! Services: the rules around each repository.

pub mod api_keys;
pub mod apps;
pub mod dead_letters;
pub mod email;
pub mod events;
pub mod inbound;
pub mod kv;
pub mod pubsub;
pub mod realtime;
pub mod scripts;
pub mod secrets;
pub mod triggers;
