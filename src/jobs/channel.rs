//! The job channel convention: every event of job `{id}` is published on channel
//! `jobs/{id}`, a channel only the jobs API writes.

use switchyard_protocol::ChannelName;

/// What every job channel's name starts with.
pub const PREFIX: &str = "jobs/";

/// The channel of job `id`.
///
/// # Panics
/// When `id` cannot be part of a channel name; job ids (see [`crate::ids::job_id`]) always
/// can.
pub fn job_channel(id: &str) -> ChannelName {
    ChannelName::new(&format!("{PREFIX}{id}")).expect("job ids are valid channel segments")
}

/// Whether `channel` is a job channel (written by the jobs API, never by publishers).
pub fn is_job_channel(channel: &str) -> bool {
    channel.starts_with(PREFIX)
}

/// The job whose channel `channel` is.
pub fn job_id_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_channel_names_its_job() {
        let c = job_channel("0193abc");
        assert_eq!(c.as_str(), "jobs/0193abc");
        assert!(is_job_channel(c.as_str()));
        assert_eq!(job_id_of(c.as_str()), Some("0193abc"));
        assert!(!is_job_channel("orders/jobs/1"));
        assert_eq!(job_id_of("orders"), None);
    }
}
