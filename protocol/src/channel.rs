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

    /// Whether some channel matches both this pattern and `other`.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (a, b): (Vec<&str>, Vec<&str>) =
            (self.0.split('/').collect(), other.0.split('/').collect());
        let tail = |segs: &[&str]| segs.last() == Some(&"**");
        let (a_fixed, b_fixed) = (
            if tail(&a) { &a[..a.len() - 1] } else { &a[..] },
            if tail(&b) { &b[..b.len() - 1] } else { &b[..] },
        );
        let common = a_fixed.len().min(b_fixed.len());
        let segments_agree = a_fixed[..common]
            .iter()
            .zip(&b_fixed[..common])
            .all(|(x, y)| *x == "*" || *y == "*" || x == y);
        if !segments_agree {
            return false;
        }
        // Past the common prefix, the shorter side must absorb the longer one's rest
        // (a `**` takes one or more segments).
        match (tail(&a), tail(&b)) {
            (false, false) => a_fixed.len() == b_fixed.len(),
            (true, false) => b_fixed.len() > a_fixed.len(),
            (false, true) => a_fixed.len() > b_fixed.len(),
            (true, true) => true,
        }
    }

    /// Whether every channel `other` matches, this pattern matches too.
    pub fn covers(&self, other: &Self) -> bool {
        let (a, b): (Vec<&str>, Vec<&str>) =
            (self.0.split('/').collect(), other.0.split('/').collect());
        let a_tail = a.last() == Some(&"**");
        let b_tail = b.last() == Some(&"**");
        let a_fixed = if a_tail { &a[..a.len() - 1] } else { &a[..] };
        let b_fixed = if b_tail { &b[..b.len() - 1] } else { &b[..] };
        let prefix_covers = |n: usize| {
            a_fixed[..n]
                .iter()
                .zip(&b_fixed[..n])
                .all(|(x, y)| *x == "*" || x == y)
        };
        match (a_tail, b_tail) {
            (false, false) => a_fixed.len() == b_fixed.len() && prefix_covers(a_fixed.len()),
            // `a/**` covers `a/b` and `a/*/**`; not `a` itself.
            (true, _) => {
                b_fixed.len() > a_fixed.len() && prefix_covers(a_fixed.len())
                    || (b_tail && b_fixed.len() == a_fixed.len() && prefix_covers(a_fixed.len()))
            }
            (false, true) => false,
        }
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

    #[test]
    fn patterns_know_when_they_overlap_or_cover_each_other() {
        let p = |s: &str| ChannelPattern::new(s).unwrap();
        assert!(p("chat/*").overlaps(&p("chat/lobby")));
        assert!(p("chat/**").overlaps(&p("*/x/y")));
        assert!(!p("chat/*").overlaps(&p("chat/a/b")));
        assert!(!p("chat/*").overlaps(&p("news/*")));
        assert!(!p("chat/**").overlaps(&p("chat")));
        assert!(p("a/*/c").overlaps(&p("a/b/*")));
        assert!(p("chat/*").covers(&p("chat/lobby")));
        assert!(p("chat/**").covers(&p("chat/*/x")));
        assert!(p("chat/**").covers(&p("chat/*/**")));
        assert!(p("**").covers(&p("anything/**")));
        assert!(!p("chat/lobby").covers(&p("chat/*")));
        assert!(!p("a/*/c").covers(&p("a/b/*")));
        assert!(!p("chat/*").covers(&p("chat/**")));
    }
}
