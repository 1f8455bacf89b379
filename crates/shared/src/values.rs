//! The rule every stored JSON value follows: its serialised size is capped.

use crate::ServiceError;
use serde_json::Value;
use zeroize::Zeroizing;

/// Serialises `value` and refuses it when it exceeds `max_bytes` (`TooLarge {limit, actual}`).
///
/// The bytes are zeroized on drop, also when refused, because the value may be a secret.
pub fn capped_json(value: &Value, max_bytes: usize) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    let bytes =
        Zeroizing::new(serde_json::to_vec(value).map_err(|_| {
            ServiceError::InvalidArgument("value is not serialisable as JSON".into())
        })?);
    if bytes.len() > max_bytes {
        return Err(ServiceError::TooLarge {
            limit: max_bytes,
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cap_counts_serialised_bytes_and_allows_exactly_the_limit() {
        // `"abc"` serialises to 5 bytes.
        assert_eq!(capped_json(&json!("abc"), 5).unwrap().len(), 5);
        assert_eq!(
            capped_json(&json!("abc"), 4).unwrap_err(),
            ServiceError::TooLarge {
                limit: 4,
                actual: 5
            }
        );
    }
}
