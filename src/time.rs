//! Wall-clock time as the gateway records it (unix milliseconds) and shows it (RFC 3339 UTC
//! with milliseconds, as envelopes and the REST API carry it).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Where a service reads the wall clock, unix milliseconds: [`now_ms`] in production. Due
/// times (webhook retries, job leases) are wall-clock times, so tests under paused Tokio time
/// pass a clock that follows the paused one.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `ms` (unix milliseconds, clamped at 0) as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert!(now_rfc3339().ends_with('Z'));
        assert!(now_ms() > 1_700_000_000_000);
    }
}
