//! Redis key names of the job store, in one place so every node agrees on them.
//!
//! A job's own hash carries its channel (`jobs/{id}`) as hash tag, next to the channel's
//! `meta`/`h` keys that [`crate::hub::redis`] reads, so a job and its event log share a
//! slot. The queue, lease and retention indexes are three global sorted sets.

use switchyard_protocol::ChannelName;

use super::keys::{PREFIX, Topics, history, meta};

/// Every key a script on one job touches, in the order the scripts expect them.
#[derive(Debug)]
pub(super) struct JobKeys {
    /// `jobs/ID`, the job's channel.
    pub(super) channel: String,
    /// `sy:{jobs/ID}:job`, the job's hash.
    pub(super) job: String,
    /// `sy:{jobs/ID}:meta`, the channel's epoch and last offset (the hub's layout).
    pub(super) meta: String,
    /// `sy:{jobs/ID}:h`, the channel's history stream (the hub's layout).
    pub(super) history: String,
    /// `sy:{jobs/ID}:live`, the channel's pub/sub topic (an argument, not a key).
    pub(super) live: String,
}

impl JobKeys {
    pub(super) fn new(channel: &ChannelName, topics: &Topics) -> Self {
        Self {
            channel: channel.to_string(),
            job: format!("{PREFIX}{{{channel}}}:job"),
            meta: meta(channel),
            history: history(channel),
            live: topics.live(channel),
        }
    }
}

/// Queued job ids, scored by the unix ms they were (re)queued at: claims take the lowest.
pub(super) fn queue() -> String {
    format!("{PREFIX}jobs:queue")
}

/// Running job ids, scored by the unix ms their lease runs out at.
pub(super) fn leases() -> String {
    format!("{PREFIX}jobs:leases")
}

/// Finished job ids, scored by the unix ms they ended at (what retention prunes by).
pub(super) fn ended() -> String {
    format!("{PREFIX}jobs:ended")
}

/// An `Idempotency-Key` of a submit: `{request hash} {job id}`, until the job is pruned.
pub(super) fn idempotency(key: &str) -> String {
    format!("{PREFIX}jobs:idem:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::channel::job_channel;

    #[test]
    fn a_job_and_its_channel_share_the_hash_tag() {
        let k = JobKeys::new(&job_channel("abc"), &Topics::for_db(0));
        assert_eq!(k.job, "sy:{jobs/abc}:job");
        assert_eq!(k.meta, "sy:{jobs/abc}:meta");
        assert_eq!(k.history, "sy:{jobs/abc}:h");
        assert_eq!(k.live, "sy:{jobs/abc}:live");
        assert_eq!(idempotency("k 1"), "sy:jobs:idem:k 1");
    }
}
