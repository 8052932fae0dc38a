//! What a JSON body may hold beyond being JSON: at most [`MAX_DEPTH`] levels of arrays and
//! objects, and only numbers a 64-bit float can hold.
//!
//! The gateway hands bodies on byte for byte (event data to consumers, job payloads to
//! workers, reports to job readers), so whatever it accepts, every consumer's parser must
//! take. serde_json (the protocol crate, Rust clients) stops at 128 levels and refuses
//! `1e400`, Go's `encoding/json` refuses `1e400` too, and the gateway wraps each body a few
//! levels deeper (an event's envelope, a long-poll page, a claim's `job.payload`): a body
//! within 64 levels stays within 128 in every answer that carries it.
//!
//! [`check`] is one pass over the bytes with no allocation; it runs on every JSON body
//! (publish, job submit, worker reports, webhook registrations, claims).

use switchyard_protocol::ErrorCode;

use super::error::ApiError;

/// The deepest nesting of arrays and objects a body may have; the body's own object or
/// array is the first level.
pub const MAX_DEPTH: usize = 64;

/// Number tokens shorter than this and without an exponent are finite as 64-bit floats
/// (f64 reaches 1.8e308), so only the others are parsed to find out.
const SURELY_FINITE_LEN: usize = 300;

/// Refuses a body nested deeper than [`MAX_DEPTH`] or holding a number that is not a
/// finite 64-bit float (`1e400`, or an integer of 400 digits). Bytes that are not JSON are
/// left for the JSON parser to refuse, with its more precise message.
///
/// # Errors
/// `bad_json`, saying which limit the body broke.
pub fn check(json: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'"' => i = string_end(json, i + 1),
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ApiError::new(
                        ErrorCode::BadJson,
                        format!(
                            "body nests arrays and objects more than {MAX_DEPTH} levels deep; \
                             consumers' JSON parsers refuse deeper documents"
                        ),
                    ));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let len = json[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(json.len() - i);
                check_number(&json[i..i + len])?;
                i += len;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index just past the string whose contents start at `from` (the end of `json` for
/// an unterminated one).
fn string_end(json: &[u8], mut from: usize) -> usize {
    loop {
        let Some(rest) = json.get(from..) else {
            return json.len();
        };
        match rest.iter().position(|b| matches!(b, b'"' | b'\\')) {
            // An escape: the next byte is part of it, even a quote.
            Some(at) if rest[at] == b'\\' => from += at + 2,
            Some(at) => return from + at + 1,
            None => return json.len(),
        }
    }
}

fn check_number(token: &[u8]) -> Result<(), ApiError> {
    let has_exponent = token.iter().any(|b| matches!(b, b'e' | b'E'));
    if token.len() < SURELY_FINITE_LEN && !has_exponent {
        return Ok(());
    }
    // A token that does not parse is not JSON: the JSON parser refuses it.
    let parsed = std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<f64>().ok());
    match parsed {
        Some(n) if !n.is_finite() => {
            let shown = String::from_utf8_lossy(&token[..token.len().min(24)]);
            let more = if token.len() > 24 { "..." } else { "" };
            Err(ApiError::new(
                ErrorCode::BadJson,
                format!(
                    "body has a number a 64-bit float cannot hold ({shown}{more}); \
                     consumers' JSON parsers refuse it"
                ),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn refused(json: &str) -> String {
        let e = check(json.as_bytes()).expect_err(json);
        assert_eq!(e.code(), ErrorCode::BadJson);
        e.message().to_owned()
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_deeper_is_refused() {
        assert!(check(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert!(refused(&nested(MAX_DEPTH + 1)).contains("64 levels"));
        assert!(refused(&nested(100_000)).contains("64 levels"));
        let objects = format!(
            "{}{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        refused(&objects);
        // Siblings do not add up: depth is how far down, not how many.
        let wide = format!("[{}]", vec![nested(MAX_DEPTH - 1); 50].join(","));
        assert!(check(wide.as_bytes()).is_ok());
    }

    #[test]
    fn brackets_and_digits_in_strings_do_not_count() {
        let text = format!(r#"{{"a": "{}", "b": "1e400 \" [[[ \\"}}"#, "[".repeat(500));
        assert!(check(text.as_bytes()).is_ok());
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        assert!(check(br#"["\\", "\"[[[[", 1]"#).is_ok());
        refused(&format!(r#"["\\", {}]"#, nested(MAX_DEPTH)));
    }

    #[test]
    fn numbers_must_be_finite_floats() {
        for ok in [
            "0",
            "-1.5",
            "1e308",
            "-1.7976931348623157e308",
            "1e-400",
            "123456789012345678901234567890",
            "[1E+2, 2.5e-3]",
        ] {
            assert!(check(ok.as_bytes()).is_ok(), "{ok}");
        }
        assert!(refused("1e400").contains("(1e400)"));
        refused(r#"{"data": [1, -1E309]}"#);
        let huge = "9".repeat(400);
        assert!(refused(&huge).contains("..."), "a long number is shortened");
        // Many digits that stay finite.
        assert!(check(format!("0.{}", "1".repeat(1000)).as_bytes()).is_ok());
    }

    #[test]
    fn what_is_not_json_is_left_to_the_parser() {
        for junk in [
            "",
            "   ",
            "[",
            "]]]]",
            "\"unterminated [[[",
            "\"\\",
            "1e",
            "--",
            "{\"a\":",
        ] {
            assert!(check(junk.as_bytes()).is_ok(), "{junk:?}");
        }
    }
}
