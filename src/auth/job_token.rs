//! Job tokens: the credential `POST /v1/jobs` returns so an untrusted client (a browser)
//! can read its own job, `jobs/{id}`, and nothing else.
//!
//! `jt1.<job id>.<base64url HMAC-SHA256(key, "jt1.<job id>")>`: deterministic (an
//! idempotent replay returns the same token), checkable without storage, and unforgeable
//! without the key, which is 32 random bytes kept in `<data_dir>/job-token.key` so tokens
//! survive restarts. The job's retention bounds what a token can read.

use std::{io::Write, path::Path};

use anyhow::Context as _;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;

/// Prefix of every job token.
pub const PREFIX: &str = "jt1.";
/// File in the data directory holding the signing key.
pub const KEY_FILE: &str = "job-token.key";

/// Issues and checks job tokens.
#[derive(Clone)]
pub struct JobTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for JobTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTokens { .. }")
    }
}

impl JobTokens {
    /// Loads the key from `data_dir`, creating it (readable by this user only) on first start.
    ///
    /// # Errors
    /// The key file cannot be read or created, or it is not 32 bytes.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(key) => {
                crate::private_files::require_private(&path, "the job token key")?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(&path)?,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if key.len() != 32 {
            anyhow::bail!(
                "{} must hold 32 bytes; delete it to make a new one (outstanding job tokens stop working)",
                path.display()
            );
        }
        Ok(Self::from_key(&key))
    }

    /// With a given key (tests, and the Redis engine's key shared by every node).
    pub fn from_key(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The token for job `id`.
    pub fn issue(&self, id: &str) -> String {
        let signed = format!("{PREFIX}{id}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The job id `token` was issued for, if it is genuine.
    pub fn verify<'a>(&self, token: &'a str) -> Option<&'a str> {
        let rest = token.strip_prefix(PREFIX)?;
        let (id, tag) = rest.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let signed = &token[..PREFIX.len() + id.len()];
        hmac::verify(&self.key, signed.as_bytes(), &tag).ok()?;
        Some(id)
    }
}

fn create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness for the job token key: {e}"))?;
    let mut file = crate::private_files::create_new(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&key)?;
    file.sync_all()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_job_and_resist_forgery() {
        let tokens = JobTokens::from_key(&[7; 32]);
        let t = tokens.issue("0192abcd");
        assert!(t.starts_with("jt1.0192abcd."));
        assert_eq!(tokens.verify(&t), Some("0192abcd"));
        assert_eq!(tokens.issue("0192abcd"), t, "deterministic");
        let other = JobTokens::from_key(&[8; 32]);
        assert_eq!(other.verify(&t), None);
        let swapped = t.replace("0192abcd", "0192abce");
        assert_eq!(tokens.verify(&swapped), None);
        for junk in ["", "jt1.", "jt1.x", "jt1.x.!!", "jt2.0192abcd.AAAA"] {
            assert_eq!(tokens.verify(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_key_persists_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let t = JobTokens::open(dir.path()).unwrap().issue("abc");
        assert_eq!(JobTokens::open(dir.path()).unwrap().verify(&t), Some("abc"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
