//! Every identifier the gateway makes: job ids, webhook endpoint and delivery ids, lease and
//! node tokens, and history epochs, all from the OS random source; and request ids, which
//! need to be unique, not unguessable.
//!
//! Ids that name rows (jobs, deliveries) start with 12 hex digits of the time in
//! milliseconds: they are unguessable (the random part) and sort by creation, so a store's
//! index grows at its end instead of touching a random page per insert.

/// Hex digits of a job id: 12 of milliseconds, then 24 of randomness (96 bits).
pub const JOB_ID_LEN: usize = 36;

/// `N` bytes from the OS random source.
///
/// # Panics
/// When the OS has no random source (the gateway cannot make a safe id without one).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

/// Lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// 12 hex digits of `now_ms` (48 bits: until the year 10889), then `random` in hex.
fn time_sorted(now_ms: i64, random: &[u8]) -> String {
    let millis = now_ms.max(0) as u64 & 0xffff_ffff_ffff;
    let mut id = format!("{millis:012x}");
    id.push_str(&hex(random));
    id
}

/// A new job id ([`JOB_ID_LEN`] lowercase hex digits), sorted by creation time.
pub fn job_id(now_ms: i64) -> String {
    time_sorted(now_ms, &random_bytes::<12>())
}

/// Whether `id` has the shape of a job id, so paths with anything else are a plain 404.
pub fn is_job_id(id: &str) -> bool {
    id.len() == JOB_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A webhook delivery id, the `webhook-id` header: `msg_`, 12 hex digits of milliseconds,
/// then 80 random bits.
pub fn delivery_id(now_ms: i64) -> String {
    format!("msg_{}", time_sorted(now_ms, &random_bytes::<10>()))
}

/// A webhook endpoint id: `ep_` and 96 random bits.
pub fn endpoint_id() -> String {
    format!("ep_{}", hex(&random_bytes::<12>()))
}

/// A 128-bit random token in hex: a job lease, or a node's mark on what it holds.
pub fn token() -> String {
    hex(&random_bytes::<16>())
}

/// A request id (`x-request-id`) for a request that came without one: 32 lowercase hex
/// digits, 64 random bits drawn once per process (ids of several nodes do not collide)
/// then a 64-bit counter, so making one costs no system call.
pub fn request_id() -> String {
    static PROCESS: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hex(&random_bytes::<8>()));
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{n:016x}", *PROCESS)
}

/// A random epoch for a channel history that starts now (53 bits: cursors stay short, and
/// that is plenty to tell incarnations apart).
pub fn epoch() -> u64 {
    u64::from_le_bytes(random_bytes::<8>()) >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unguessable_and_sort_by_time() {
        let id = job_id(1_700_000_000_000);
        assert!(is_job_id(&id), "{id}");
        assert_ne!(id, job_id(1_700_000_000_000));
        let later = job_id(1_700_000_000_001);
        assert!(
            later > id,
            "later ids sort after earlier ones: {id} then {later}"
        );
        assert!(!is_job_id("claim"));
        assert!(!is_job_id(&id.to_uppercase()));
        assert!(!is_job_id(&format!("{}g", &id[1..])));
    }

    #[test]
    fn prefixed_ids_and_tokens_have_their_shapes() {
        let d = delivery_id(0x0123_4567_89ab);
        assert_eq!(&d[..16], "msg_0123456789ab");
        assert_eq!(d.len(), 4 + 12 + 20);
        let (r1, r2) = (request_id(), request_id());
        assert!(r1.len() == 32 && r1 != r2, "{r1} {r2}");
        assert_eq!(r1[..16], r2[..16], "one process prefix");
        let e = endpoint_id();
        assert!(e.starts_with("ep_") && e.len() == 3 + 24, "{e}");
        assert_eq!(token().len(), 32);
        assert_ne!(token(), token());
        assert!(epoch() < 1 << 53);
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }
}
