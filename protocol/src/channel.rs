//! Channel names (`A-Z a-z 0-9 _ - . : / @`, 1-200 chars) and patterns (`*` one segment, trailing `**` any suffix).

use std::{borrow::Borrow, fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DecodeError;

/// The longest channel name accepted, in bytes (all allowed characters are ASCII).
pub const MAX_CHANNEL_LEN: usize = 200;

/// A validated channel name; cheap to clone (shared `Arc<str>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@')
}

impl ChannelName {
    /// Validates `name` against the naming rules.
    ///
    /// # Errors
    /// [`DecodeError::InvalidChannel`] when it is empty, longer than [`MAX_CHANNEL_LEN`], or
    /// holds a character outside `A-Z a-z 0-9 _ - . : / @`.
    pub fn new(name: &str) -> Result<Self, DecodeError> {
        if name.is_empty() {
            return Err(DecodeError::InvalidChannel("must not be empty"));
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(DecodeError::InvalidChannel("longer than 200 characters"));
        }
        if !name.bytes().all(is_name_byte) {
            return Err(DecodeError::InvalidChannel(
                "only A-Z a-z 0-9 _ - . : / @ are allowed",
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A channel pattern: segments split on `/`, `*` matches exactly one segment, and a final
/// `**` matches one or more further segments (`orders/**` matches `orders/1/items`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPattern(String);

impl ChannelPattern {
    /// Validates a pattern.
    ///
    /// # Errors
    /// [`DecodeError::InvalidPattern`] when a segment mixes `*` with other characters, `**`
    /// is not the last segment, or the literal parts break the channel naming rules.
    pub fn new(pattern: &str) -> Result<Self, DecodeError> {
        if pattern.is_empty() || pattern.len() > MAX_CHANNEL_LEN {
            return Err(DecodeError::InvalidPattern("must be 1-200 characters"));
        }
        let segments: Vec<&str> = pattern.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            match *seg {
                "*" => {}
                "**" if i + 1 == segments.len() => {}
                "**" => return Err(DecodeError::InvalidPattern("`**` must be the last segment")),
                s if s.contains('*') => {
                    return Err(DecodeError::InvalidPattern("`*` must be a whole segment"));
                }
                s if !s.bytes().all(is_name_byte) => {
                    return Err(DecodeError::InvalidPattern(
                        "only A-Z a-z 0-9 _ - . : / @ * are allowed",
                    ));
                }
                _ => {}
            }
        }
        Ok(Self(pattern.to_owned()))
    }

    /// Whether `channel` matches this pattern.
    pub fn matches(&self, channel: &str) -> bool {
        let mut names = channel.split('/');
        let mut pats = self.0.split('/').peekable();
        while let Some(p) = pats.next() {
            if p == "**" && pats.peek().is_none() {
                return names.next().is_some();
            }
            match names.next() {
                Some(n) if p == "*" || p == n => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(ChannelName::new("jobs/4f2c:7@a.b-c_d").is_ok());
        assert!(ChannelName::new(&"a".repeat(200)).is_ok());
        assert!(ChannelName::new(&"a".repeat(201)).is_err());
        assert!(ChannelName::new("").is_err());
        for bad in ["a b", "a?b", "é", "a\nb", "a#b", "a%2F"] {
            assert!(ChannelName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn patterns_match_segments() {
        let p = ChannelPattern::new("jobs/*").unwrap();
        assert!(p.matches("jobs/1"));
        assert!(!p.matches("jobs/1/x"));
        assert!(!p.matches("jobs"));
        let p = ChannelPattern::new("orders/**").unwrap();
        assert!(p.matches("orders/1"));
        assert!(p.matches("orders/1/items"));
        assert!(!p.matches("orders"));
        assert!(!p.matches("order/1"));
        let p = ChannelPattern::new("a/*/c").unwrap();
        assert!(p.matches("a/b/c"));
        assert!(!p.matches("a/b/d"));
        assert!(ChannelPattern::new("a/**/c").is_err());
        assert!(ChannelPattern::new("a*").is_err());
    }
}
