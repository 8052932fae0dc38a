//! Files only the gateway's user may read: the data directory (0700), the files it creates
//! there (0600), and the check that a secret key file is not readable by group or others.
//!
//! The data directory holds webhook signing secrets (in SQLite) and the job-token key:
//! anyone who can read them can forge webhooks and job tokens. Modes are set at creation,
//! whatever the umask; existing loose modes are reported, not silently changed, since the
//! operator may have reasons (a backup user's group) that the gateway cannot see.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;

/// Mode bits that let group or others read, write or enter.
const SHARED_BITS: u32 = 0o077;

/// Creates `dir` (and missing parents) readable by this user only; an existing directory
/// that group or others can enter is logged as a warning.
///
/// # Errors
/// The directory cannot be created.
pub fn create_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    if let Some(mode) = shared_mode(dir) {
        tracing::warn!(
            path = %dir.display(),
            mode = format_args!("{mode:o}"),
            "data_dir is open to group or others; it holds webhook secrets and the job token key: chmod 700 it",
        );
    }
    Ok(())
}

/// Opens `path` for reading and writing, creating it with mode 0600 when missing.
///
/// # Errors
/// As [`OpenOptions::open`].
pub fn open_or_create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Creates `path` with mode 0600; fails if it exists.
///
/// # Errors
/// As [`OpenOptions::open`].
pub fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Refuses a secret key file that group or others may read: a key readable by other
/// accounts is a key already shared.
///
/// # Errors
/// The file's mode lets group or others in (the message says how to fix it).
pub fn require_private(path: &Path, what: &str) -> anyhow::Result<()> {
    match shared_mode(path) {
        None => Ok(()),
        Some(mode) => anyhow::bail!(
            "{what} {} has mode {mode:o}: group and others must not read it; \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        ),
    }
}

/// Logs a warning when group or others may read the secret key file `path`.
pub fn warn_if_shared(path: &Path, what: &str) {
    if let Some(mode) = shared_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "{what} is readable by group or others: chmod 600 it",
        );
    }
}

/// The permission bits of `path` when group or others have any; `None` otherwise or when
/// it cannot be read (the caller's own open reports that).
fn shared_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & SHARED_BITS != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use std::fs::Permissions;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_directories_and_files_are_the_owners_alone_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/data");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        open_or_create(&dir.join("x")).unwrap();
        create_new(&dir.join("y")).unwrap();
        assert_eq!(mode(&dir.join("x")), 0o600);
        assert_eq!(mode(&dir.join("y")), 0o600);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        let err = require_private(&key, "the job token key")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&key, Permissions::from_mode(0o640)).unwrap();
        assert!(require_private(&key, "k").is_err());
        std::fs::set_permissions(&key, Permissions::from_mode(0o600)).unwrap();
        require_private(&key, "k").unwrap();
    }
}
