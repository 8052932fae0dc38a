//! When to try a failed delivery again: the configured schedule with ±20% jitter, or the
//! receiver's `Retry-After` (on 429/503) within bounds.

use std::time::Duration;

/// Longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The delay before the next attempt after `attempts` have failed, or `None` when the
/// schedule is used up (the delivery fails for good).
pub fn next_delay(
    schedule: &[f64],
    attempts: u32,
    retry_after: Option<Duration>,
    unit_random: f64,
) -> Option<Duration> {
    let base = *schedule.get(attempts.checked_sub(1)? as usize)?;
    if let Some(asked) = retry_after {
        return Some(asked.min(MAX_RETRY_AFTER));
    }
    let jitter = 0.8 + 0.4 * unit_random.clamp(0.0, 1.0);
    Some(Duration::from_secs_f64(base * jitter))
}

/// A `Retry-After` header given in seconds (the HTTP-date form is not used by receivers in
/// practice and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A uniform random number in [0, 1).
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_with_jitter_then_stops() {
        let schedule = [5.0, 300.0];
        assert_eq!(
            next_delay(&schedule, 1, None, 0.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            next_delay(&schedule, 1, None, 1.0),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            next_delay(&schedule, 2, None, 0.5),
            Some(Duration::from_secs(300))
        );
        assert_eq!(next_delay(&schedule, 3, None, 0.5), None);
        assert_eq!(next_delay(&schedule, 0, None, 0.5), None);
    }

    #[test]
    fn the_default_schedule_is_eight_attempts_over_about_27_6_hours() {
        // docs/webhooks.md, "The retry schedule".
        let schedule = crate::config::Config::default()
            .webhooks
            .retry_schedule_secs;
        let delays: Vec<_> = (1..)
            .map_while(|attempts| next_delay(&schedule, attempts, None, 0.5))
            .collect();
        assert_eq!(delays.len() + 1, 8, "attempts");
        let hours = delays.iter().sum::<Duration>().as_secs_f64() / 3600.0;
        assert!((27.55..27.65).contains(&hours), "{hours} h");
    }

    #[test]
    fn retry_after_replaces_the_delay_within_bounds() {
        let schedule = [5.0, 300.0];
        assert_eq!(
            next_delay(&schedule, 1, Some(Duration::from_secs(60)), 0.3),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(&schedule, 1, Some(Duration::from_secs(1 << 30)), 0.3),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            next_delay(&schedule, 2, Some(Duration::from_secs(60)), 0.3),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(&schedule, 3, Some(Duration::from_secs(60)), 0.3),
            None,
            "it changes a delay, not the number of attempts"
        );
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        let r = unit_random();
        assert!((0.0..1.0).contains(&r));
    }
}
