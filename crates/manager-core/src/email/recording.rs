//! A transport that keeps what it is given instead of sending it, and can be
//! told to fail: for tests of everything above the SMTP wire.

use async_trait::async_trait;
use picloud_shared::email::{EmailTransport, RawEmail, TransportError};
use std::sync::{Arc, Mutex};

/// Records every message; answers each send with the next scripted failure, if any.
#[derive(Clone, Default)]
pub struct RecordingTransport {
    sent: Arc<Mutex<Vec<RawEmail>>>,
    failures: Arc<Mutex<Vec<TransportError>>>,
}

impl RecordingTransport {
    /// An empty recorder that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next send fail with `error` (queued in order).
    pub fn fail_next(&self, error: TransportError) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(error);
    }

    /// What was accepted so far, oldest first.
    pub fn sent(&self) -> Vec<RawEmail> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl EmailTransport for RecordingTransport {
    async fn send(&self, email: &RawEmail) -> Result<(), TransportError> {
        let failure = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(error) = failure {
            return Err(error);
        }
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(email.clone());
        Ok(())
    }
}
