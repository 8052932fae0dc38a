//! The job token signing key every node shares through Redis (`sy:job-token-key`), and the
//! task that keeps it there: a Redis restarted empty loses it, and a node started after that
//! would otherwise make a new key and refuse the tokens the older nodes issue.

use std::{sync::Arc, time::Duration};

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use crate::{
    ids::{hex, token as random_token},
    store::StoreError,
};

/// How often a node puts its key back if Redis lost it.
const KEEP_EVERY: Duration = Duration::from_secs(2);

fn redis_key() -> String {
    format!("{}job-token-key", super::keys::PREFIX)
}

impl RedisStore {
    /// The key job tokens are signed with, shared by every node: created by the first node
    /// that asks (32 random bytes, hex), read by the others. Keep it with
    /// `keep_job_token_key`.
    ///
    /// # Errors
    /// When Redis cannot be reached or holds something else under the key.
    pub async fn shared_job_token_key(&self) -> Result<Vec<u8>, StoreError> {
        let key = redis_key();
        let mut conn = self.conn.clone();
        let _: Value = self
            .timed(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(random_token() + &random_token())
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        let hex: String = self
            .timed(redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await?;
        decode_key(&hex)
            .ok_or_else(|| StoreError::Unavailable(format!("{key} does not hold 64 hex digits")))
    }

    /// Puts `key` back if Redis no longer holds a key; `Ok(false)` when Redis holds a
    /// different one.
    async fn reassert_job_token_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let ours = hex(key);
        let set: Value = self
            .timed(
                redis::cmd("SET")
                    .arg(redis_key())
                    .arg(&ours)
                    .arg("NX")
                    .arg("GET")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match set {
            Value::Nil => {
                tracing::warn!(
                    "Redis had lost the shared job token key (restarted empty?); this node put its key back"
                );
                true
            }
            Value::BulkString(held) => held == ours.as_bytes(),
            _ => false,
        })
    }
}

/// Keeps `key` in Redis until `stop`, and says loudly when the cluster disagrees on it.
pub(crate) async fn keep_job_token_key(
    store: Arc<RedisStore>,
    key: Vec<u8>,
    stop: CancellationToken,
) {
    let mut reported = false;
    loop {
        match store.reassert_job_token_key(&key).await {
            Ok(true) => reported = false,
            Ok(false) if !reported => {
                tracing::error!(
                    "Redis holds another job token key than this node signs with: job tokens one node issues are refused by the others; restart this node to adopt the shared key"
                );
                reported = true;
            }
            // Redis away: the hub and the stores report it already.
            Ok(false) | Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(KEEP_EVERY) => {}
        }
    }
}

fn decode_key(hex: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.filter(|b| b.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_bad_ones_are_refused() {
        let key: Vec<u8> = (0..32).collect();
        assert_eq!(decode_key(&hex(&key)), Some(key));
        assert_eq!(decode_key("abc"), None);
        assert_eq!(decode_key(&"zz".repeat(32)), None);
        assert_eq!(decode_key(&"00".repeat(31)), None);
    }
}
