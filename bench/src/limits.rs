//! The open-files limit (`RLIMIT_NOFILE`): reading it, raising the soft limit to the hard
//! one, and telling "out of file descriptors" apart from other connect errors.

use std::io;

/// `EMFILE` (process limit) and `ENFILE` (system-wide table full).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Connections one bench process can hold, leaving room for the runtime's own descriptors.
pub const HEADROOM: u64 = 64;

/// The open-files limit of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Enforced limit.
    pub soft: u64,
    /// Ceiling the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// Reads this process's limit from `/proc/self/limits` (`None` if unreadable).
pub fn read() -> Option<NofileLimit> {
    parse(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse(text: &str) -> Option<NofileLimit> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let value = |s: Option<&str>| match s? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some(NofileLimit {
        soft: value(nums.next())?,
        hard: value(nums.next())?,
    })
}

/// Raises the soft limit to the hard one, without `unsafe`: through util-linux `prlimit(1)`
/// on our own pid. Silently keeps the current limit when that tool is missing or refuses.
/// Returns the limit in force afterwards.
pub fn raise_to_hard() -> Option<NofileLimit> {
    let before = read()?;
    if before.soft >= before.hard {
        return Some(before);
    }
    let hard = if before.hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        before.hard.to_string()
    };
    let _ = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    read()
}

/// Whether `e` means the process (or system) is out of file descriptors.
pub fn is_fd_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// The message printed when connections fail for lack of file descriptors.
pub fn exhausted_message(opened: usize, wanted: usize) -> String {
    format!(
        "out of file descriptors after {opened} of {wanted} connections ({}). {ADVICE}",
        describe()
    )
}

/// The message printed when `wanted` connections cannot fit under the limit at all.
pub fn too_many_message(wanted: usize) -> String {
    format!(
        "{wanted} connections do not fit under the open-files limit ({}). {ADVICE}",
        describe()
    )
}

const ADVICE: &str = "One bench process holds at most about (soft limit - 64) connections, ~15k \
                      under a 20000 hard limit: run several bench processes with fewer \
                      connections each, or raise `ulimit -Hn`";

fn describe() -> String {
    read().map_or_else(
        || "limit unknown".to_owned(),
        |l| format!("soft {} / hard {}", l.soft, l.hard),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(
            parse(text),
            Some(NofileLimit {
                soft: 1024,
                hard: 20000
            })
        );
        assert!(read().is_some());
    }

    #[test]
    fn recognises_fd_exhaustion() {
        assert!(is_fd_exhausted(&io::Error::from_raw_os_error(EMFILE)));
        assert!(!is_fd_exhausted(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
    }
}
