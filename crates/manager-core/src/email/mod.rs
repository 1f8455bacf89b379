//! Outbound email below the service: formatting ([`compose`]) and transports
//! ([`smtp`] for production, [`recording`] for tests and dry runs).

pub mod compose;
pub mod recording;
pub mod smtp;
