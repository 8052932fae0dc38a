//! The data directory's lock: one gateway per data directory. Two processes sharing one
//! SQLite store and job-token key would each believe they own the jobs (claims and lease
//! expiry stalled between them), so the second refuses to start, naming the first.
//!
//! The lock is an advisory `flock` on `switchyard.lock`, held for the life of the process
//! (the kernel drops it when the process exits, even on SIGKILL); the file holds the
//! holder's pid, for the refusal message. Creating it is also the first write to the
//! directory, so a directory the process cannot write is refused here, before anything
//! else, with a message that says so.

use std::{
    fs::{File, TryLockError},
    io::{Read, Seek, Write},
    path::Path,
};

use anyhow::{Context as _, bail};

use crate::private_files;

/// The lock file inside `data_dir`.
pub(super) const LOCK_FILE: &str = "switchyard.lock";

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub(super) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `dir` (created when missing), or says who holds it.
    ///
    /// # Errors
    /// The directory cannot be created or written, or another process holds the lock.
    pub(super) fn take(dir: &Path) -> anyhow::Result<Self> {
        private_files::create_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut file = private_files::open_or_create(&path).with_context(|| {
            format!(
                "data_dir {} is not writable by this process (cannot create {LOCK_FILE}); \
                     give the gateway's user write access or choose another --data-dir",
                dir.display()
            )
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::from("another process"),
                    pid => format!("another switchyard (pid {pid})"),
                };
                bail!(
                    "data_dir {} is in use by {holder}: one gateway per data directory; \
                     stop it or choose another --data-dir",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("data_dir {} is not writable", dir.display()))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::take(dir.path()).unwrap();
        let refused = DataDirLock::take(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains("is in use by another switchyard"),
            "{refused}"
        );
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(first);
        DataDirLock::take(dir.path()).expect("free again");
    }
}
