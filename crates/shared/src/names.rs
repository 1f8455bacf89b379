//! Name and key validation rules, shared by services and their test fakes.

use crate::ServiceError;

/// App and script names: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_resource_name(what: &str, name: &str) -> Result<(), ServiceError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "{what} name must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
        )))
    }
}

/// kv collection names and secret names: `[A-Za-z0-9_.-]{1,128}`.
pub fn validate_dotted_name(what: &str, name: &str) -> Result<(), ServiceError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "{what} name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.' or '-'"
        )))
    }
}

/// kv keys: any UTF-8 of 1-512 bytes without control characters.
pub fn validate_kv_key(key: &str) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > 512 {
        return Err(ServiceError::InvalidArgument(
            "kv key must be 1-512 bytes of UTF-8".into(),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(
            "kv key must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// The `prefix` and `after` bounds of a kv listing: like a key, but `prefix` may be
/// empty. Checked before the database sees them (PostgreSQL text cannot hold NUL).
pub fn validate_kv_list_bounds(prefix: &str, after: Option<&str>) -> Result<(), ServiceError> {
    for (what, bound) in [("prefix", Some(prefix)), ("after", after)] {
        let Some(bound) = bound else { continue };
        if bound.len() > 512 || bound.chars().any(char::is_control) {
            return Err(ServiceError::InvalidArgument(format!(
                "kv list {what} must be at most 512 bytes of UTF-8 without control characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert!(validate_resource_name("app", "my-app_1").is_ok());
        assert!(validate_resource_name("app", &"a".repeat(64)).is_ok());
        assert!(validate_resource_name("app", &"a".repeat(65)).is_err());
        assert!(validate_resource_name("app", "").is_err());
        assert!(validate_resource_name("app", "has space").is_err());
        assert!(validate_resource_name("app", "dot.ted").is_err());
        assert!(validate_resource_name("app", "ünï").is_err());
    }

    #[test]
    fn dotted_names() {
        assert!(validate_dotted_name("collection", "users.v2").is_ok());
        assert!(validate_dotted_name("collection", &"a".repeat(128)).is_ok());
        assert!(validate_dotted_name("collection", &"a".repeat(129)).is_err());
        assert!(validate_dotted_name("collection", "a/b").is_err());
    }

    #[test]
    fn kv_keys() {
        assert!(validate_kv_key("user:42/ü").is_ok());
        assert!(validate_kv_key(&"k".repeat(512)).is_ok());
        assert!(validate_kv_key(&"k".repeat(513)).is_err());
        assert!(validate_kv_key("").is_err());
        assert!(validate_kv_key("a\nb").is_err());
        assert!(validate_kv_key("a\u{7f}").is_err());
        assert!(validate_kv_list_bounds("", None).is_ok());
        assert!(validate_kv_list_bounds("a\u{0}b", None).is_err());
        assert!(validate_kv_list_bounds("a", Some("a\u{0}")).is_err());
        assert!(validate_kv_list_bounds(&"k".repeat(513), None).is_err());
    }
}
