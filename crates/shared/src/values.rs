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

/// Largest integer JSON numbers carry exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// Deserializes an optional whole number that JSON may write as `5` or `5.0`
/// (both are integers in JSON Schema), at most [`MAX_SAFE_INTEGER`].
pub fn optional_whole_number<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_SAFE_INTEGER as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(n) if n <= MAX_SAFE_INTEGER => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(
            "expected a whole number from 0 to 9007199254740991",
        )),
    }
}

#[cfg(test)]
mod whole_number_tests {
    #[derive(serde::Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "super::optional_whole_number")]
        n: Option<u64>,
    }

    fn n(json: &str) -> Option<Option<u64>> {
        serde_json::from_str::<Holder>(json).ok().map(|h| h.n)
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        assert_eq!(n(r#"{"n": 5}"#), Some(Some(5)));
        assert_eq!(n(r#"{"n": 5.0}"#), Some(Some(5)));
        assert_eq!(n(r#"{"n": null}"#), Some(None));
        assert_eq!(n(r#"{}"#), Some(None));
        assert_eq!(n(r#"{"n": 5.5}"#), None);
        assert_eq!(n(r#"{"n": -1}"#), None);
        assert_eq!(n(r#"{"n": 9007199254740992}"#), None);
        assert_eq!(n(r#"{"n": "5"}"#), None);
    }
}
