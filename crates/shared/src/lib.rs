//! picloud-shared: the vocabulary every picloud layer speaks.
//!
//! Ids, scopes and capabilities, the service error, name validation and the
//! service traits (`KvService`, ...) that `executor-core` calls and
//! `manager-core` implements. Nothing here touches PostgreSQL, HTTP or Rhai,
//! so every layer can depend on it and tests can fake the traits.

pub mod auth;
pub mod crypto;
pub mod domain;
pub mod email;
pub mod error;
pub mod ids;
pub mod inbound;
pub mod kv;
pub mod names;
pub mod pubsub;
pub mod realtime;
pub mod script;
pub mod secrets;
pub mod triggers;
pub mod values;

pub use error::ServiceError;
