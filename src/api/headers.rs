//! Request headers the API reads, parsed in one place with one set of error messages.

use http::{HeaderMap, header};

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A header whose value the API cannot take (400 `invalid_parameter`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidHeader(pub String);

/// The `Idempotency-Key` of a publish or a job submit, if any.
///
/// # Errors
/// When present but empty, longer than [`MAX_IDEMPOTENCY_KEY_LEN`], or not visible ASCII
/// (spaces and tabs are allowed inside).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, InvalidHeader> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN => Ok(Some(k)),
        Some(_) => Err(InvalidHeader(format!(
            "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ))),
    }
}

/// The declared `Content-Length`, if any (and readable).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The media type of `Content-Type` (lowercase, without parameters), if the header is set.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    Some(
        ct.to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Whether a media type is JSON (`application/json` or any `+json` type).
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            idempotency_key(&with("idempotency-key", "order 42")).unwrap(),
            Some("order 42")
        );
        assert!(idempotency_key(&with("idempotency-key", "")).is_err());
        assert!(idempotency_key(&with("idempotency-key", &"k".repeat(256))).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            "idempotency-key",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn content_headers() {
        assert_eq!(content_length(&with("content-length", "12")), Some(12));
        assert_eq!(content_length(&with("content-length", "x")), None);
        let mt = media_type(&with("content-type", "Application/JSON; charset=utf-8")).unwrap();
        assert!(is_json(&mt));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert_eq!(media_type(&HeaderMap::new()), None);
    }
}
