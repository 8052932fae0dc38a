//! Server-side API keys: parsed from config (`KEY` or `KEY:scope+scope`), kept only as
//! SHA-256 digests, matched in constant time, and named in logs by a short fingerprint.

use std::fmt;

use ring::digest::{SHA256, digest};

use super::Scope;

/// Shortest API key accepted: guessing must be hopeless.
pub const MIN_KEY_LEN: usize = 16;

/// One configured key.
pub struct ApiKey {
    digest: [u8; 32],
    scopes: Vec<Scope>,
    /// Index in the configuration: the rate limiter's bucket.
    pub index: usize,
    /// First 8 hex digits of the key's SHA-256: safe to log, enough to tell keys apart.
    pub fingerprint: String,
}

impl ApiKey {
    /// Whether the key carries `scope` (`admin` carries every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("fingerprint", &self.fingerprint)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Every configured key.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Parses the configured entries: `KEY` (every scope) or `KEY:scope+scope`.
    ///
    /// # Errors
    /// A short key, an unknown scope, or a key given twice; the message never repeats the key.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let n = index + 1;
            let (key, scopes) = match entry.rsplit_once(':') {
                Some((key, scopes)) => {
                    let scopes = scopes
                        .split('+')
                        .map(|s| {
                            s.trim().parse::<Scope>().map_err(|()| {
                                anyhow::anyhow!(
                                    "`auth.api_keys` entry {n}: unknown scope {s:?}; scopes are publish, jobs, work, subscribe, admin"
                                )
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    (key.trim(), scopes)
                }
                None => (entry.trim(), vec![Scope::Admin]),
            };
            if key.len() < MIN_KEY_LEN {
                anyhow::bail!(
                    "`auth.api_keys` entry {n}: a key needs at least {MIN_KEY_LEN} characters"
                );
            }
            if key.chars().any(|c| !c.is_ascii_graphic()) {
                anyhow::bail!("`auth.api_keys` entry {n}: a key is printable ASCII without spaces");
            }
            let digest = sha256(key);
            if keys.iter().any(|k| k.digest == digest) {
                anyhow::bail!("`auth.api_keys` entry {n} repeats an earlier key");
            }
            keys.push(ApiKey {
                digest,
                scopes,
                index,
                fingerprint: crate::ids::hex(&digest[..4]),
            });
        }
        Ok(Self { keys })
    }

    /// Whether no key is configured (open mode).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key `presented` is, if any. Every configured digest is compared, in constant
    /// time, so timing tells nothing about how close a guess came.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let digest = sha256(presented);
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.digest, &digest) {
                found = Some(key);
            }
        }
        found
    }
}

fn sha256(text: &str) -> [u8; 32] {
    digest(&SHA256, text.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Compares without an early exit.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[&str]) -> anyhow::Result<ApiKeys> {
        ApiKeys::parse(&entries.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn entries_carry_scopes() {
        let k = keys(&[
            "backend-key-0123456789",
            "worker-key-0123456789:work",
            "pub-key-0123456789:publish+jobs",
        ])
        .unwrap();
        assert_eq!(k.len(), 3);
        let admin = k.find("backend-key-0123456789").unwrap();
        assert!(admin.has(Scope::Work) && admin.has(Scope::Publish));
        let worker = k.find("worker-key-0123456789").unwrap();
        assert!(worker.has(Scope::Work) && !worker.has(Scope::Jobs));
        let publisher = k.find("pub-key-0123456789").unwrap();
        assert!(publisher.has(Scope::Publish) && publisher.has(Scope::Jobs));
        assert!(!publisher.has(Scope::Admin));
        assert_eq!(publisher.index, 2);
        assert!(k.find("pub-key-0123456788").is_none());
        assert!(k.find("").is_none());
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_the_key() {
        let short = keys(&["short:publish"]).unwrap_err().to_string();
        assert!(short.contains("at least 16"), "{short}");
        assert!(!short.contains("short:"), "{short}");
        let scope = keys(&["a-long-enough-key-123:root"])
            .unwrap_err()
            .to_string();
        assert!(scope.contains("unknown scope \"root\""), "{scope}");
        assert!(!scope.contains("a-long-enough"), "{scope}");
        let dup = keys(&["a-long-enough-key-123", "a-long-enough-key-123:work"])
            .unwrap_err()
            .to_string();
        assert!(dup.contains("repeats"), "{dup}");
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let k = keys(&["backend-key-0123456789"]).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("backend-key"), "{shown}");
        assert!(shown.contains(&k.find("backend-key-0123456789").unwrap().fingerprint));
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
