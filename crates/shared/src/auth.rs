//! Scopes, capabilities and the one table that maps a capability to its scope.
//!
//! Endpoints never name scopes directly: each declares the `Capability` it
//! needs, and `Capability::required_scope` is the single place that decides
//! which scope grants it. A new feature adds capabilities, never scopes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of exactly seven scopes an API key can hold. `Admin` implies all others.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Scope {
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "app:read")]
    AppRead,
    #[serde(rename = "app:write")]
    AppWrite,
    #[serde(rename = "script:read")]
    ScriptRead,
    #[serde(rename = "script:write")]
    ScriptWrite,
    #[serde(rename = "data:read")]
    DataRead,
    #[serde(rename = "data:write")]
    DataWrite,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 7] = [
        Scope::Admin,
        Scope::AppRead,
        Scope::AppWrite,
        Scope::ScriptRead,
        Scope::ScriptWrite,
        Scope::DataRead,
        Scope::DataWrite,
    ];

    /// The wire name, e.g. `app:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::AppRead => "app:read",
            Scope::AppWrite => "app:write",
            Scope::ScriptRead => "script:read",
            Scope::ScriptWrite => "script:write",
            Scope::DataRead => "data:read",
            Scope::DataWrite => "data:write",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope (expected one of admin, app:read, app:write, script:read, script:write, data:read, data:write)")]
pub struct UnknownScope;

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or(UnknownScope)
    }
}

/// Something a caller may do. Every HTTP endpoint requires exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    AppsRead,
    AppsWrite,
    ScriptsRead,
    ScriptsWrite,
    ApiKeysManage,
    ScriptInvoke,
    AppSecretsRead,
    AppSecretsWrite,
    /// List and inspect triggers.
    TriggersRead,
    /// Register and delete triggers.
    TriggersWrite,
    /// List and inspect dead letters.
    DeadLettersRead,
    /// Replay and delete dead letters.
    DeadLettersWrite,
    /// Read an app's outbox counts.
    OutboxRead,
    /// Read an app's email policy.
    EmailPolicyRead,
    /// Change an app's email policy.
    EmailPolicyWrite,
    /// See which relay outbound email goes through (never its password).
    EmailStatusRead,
    /// See an app's inbound email endpoint.
    EmailInboundRead,
    /// Set an app's inbound email secret.
    EmailInboundWrite,
    /// Mint realtime subscriber tokens (SPEC §3: `data:write`).
    RealtimeTokensMint,
    /// Rotate an app's realtime signing key.
    RealtimeKeyRotate,
}

impl Capability {
    /// Every capability, for tests and tables that must cover them all.
    pub const ALL: [Capability; 20] = [
        Capability::AppsRead,
        Capability::AppsWrite,
        Capability::ScriptsRead,
        Capability::ScriptsWrite,
        Capability::ApiKeysManage,
        Capability::ScriptInvoke,
        Capability::AppSecretsRead,
        Capability::AppSecretsWrite,
        Capability::TriggersRead,
        Capability::TriggersWrite,
        Capability::DeadLettersRead,
        Capability::DeadLettersWrite,
        Capability::OutboxRead,
        Capability::EmailPolicyRead,
        Capability::EmailPolicyWrite,
        Capability::EmailStatusRead,
        Capability::EmailInboundRead,
        Capability::EmailInboundWrite,
        Capability::RealtimeTokensMint,
        Capability::RealtimeKeyRotate,
    ];

    /// The one capability → scope table.
    pub fn required_scope(self) -> Scope {
        match self {
            Capability::AppsRead => Scope::AppRead,
            Capability::AppsWrite => Scope::AppWrite,
            Capability::ScriptsRead => Scope::ScriptRead,
            Capability::ScriptsWrite => Scope::ScriptWrite,
            Capability::ApiKeysManage => Scope::Admin,
            Capability::ScriptInvoke => Scope::DataWrite,
            Capability::AppSecretsRead => Scope::ScriptRead,
            Capability::AppSecretsWrite => Scope::ScriptWrite,
            Capability::TriggersRead => Scope::AppRead,
            Capability::TriggersWrite => Scope::AppWrite,
            Capability::DeadLettersRead => Scope::AppRead,
            Capability::DeadLettersWrite => Scope::AppWrite,
            Capability::OutboxRead => Scope::AppRead,
            Capability::EmailPolicyRead => Scope::AppRead,
            Capability::EmailPolicyWrite => Scope::AppWrite,
            Capability::EmailStatusRead => Scope::AppRead,
            Capability::EmailInboundRead => Scope::AppRead,
            Capability::EmailInboundWrite => Scope::AppWrite,
            Capability::RealtimeTokensMint => Scope::DataWrite,
            Capability::RealtimeKeyRotate => Scope::AppWrite,
        }
    }
}

/// True when a key holding `scopes` may exercise `capability`.
pub fn scopes_allow(scopes: &[Scope], capability: Capability) -> bool {
    let needed = capability.required_scope();
    scopes.iter().any(|s| *s == Scope::Admin || *s == needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_every_capability_and_each_needs_its_scope() {
        for capability in Capability::ALL {
            let needed = capability.required_scope();
            assert!(scopes_allow(&[Scope::Admin], capability), "{capability:?}");
            assert!(scopes_allow(&[needed], capability), "{capability:?}");
            let others: Vec<Scope> = Scope::ALL
                .into_iter()
                .filter(|s| *s != needed && *s != Scope::Admin)
                .collect();
            assert!(!scopes_allow(&others, capability), "{capability:?}");
        }
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
        }
        assert_eq!("root".parse::<Scope>(), Err(UnknownScope));
    }

    #[test]
    fn a_scope_grants_only_its_capabilities() {
        assert!(scopes_allow(&[Scope::AppRead], Capability::AppsRead));
        assert!(!scopes_allow(&[Scope::AppRead], Capability::AppsWrite));
        assert!(!scopes_allow(&[Scope::DataRead], Capability::ScriptInvoke));
        assert!(!scopes_allow(
            &[Scope::ScriptWrite],
            Capability::ApiKeysManage
        ));
        assert!(!scopes_allow(&[], Capability::AppsRead));
    }
}
