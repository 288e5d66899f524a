//! One apply, destroy or watch of a fleet at a time on this machine: an exclusive lock on a
//! file, held from the observation to the end of the apply. The kernel releases it when the
//! holder exits, `kill -9` included, so a crash never leaves a stale lock.
//!
//! The lock lives in a directory only fleet's user can write (`/run/fleet` for root, else
//! `$XDG_RUNTIME_DIR/fleet`, or `$FLEET_LOCK_DIR`), and the file is opened without following a
//! symbolic link: in a shared directory such as /tmp another user could hold the lock for ever,
//! or plant a link that makes fleet truncate a file of its user's (docs/security.md).

use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};

pub(crate) use crate::this_machine::hostname;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that overrides where lock files live.
pub const LOCK_DIR_ENV: &str = "FLEET_LOCK_DIR";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the lock file {} is a symbolic link: fleet opens its lock file only as a plain file; remove the link",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error(
        "fleet `{fleet}` is locked by {holder}; gave up after {waited_secs} s (--lock-timeout)"
    )]
    Timeout {
        fleet: String,
        holder: String,
        waited_secs: u64,
    },
    #[error(
        "no directory for fleet's lock: fleet runs as uid {uid}, not root, and XDG_RUNTIME_DIR is not set; set {LOCK_DIR_ENV} to a directory owned by this user with mode 0700"
    )]
    NoLockDir { uid: u32 },
    #[error("cannot create the lock directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing the lock directory {}: {problem}; it must be a directory owned by uid {uid} (fleet's user) that no group or other user can write: `chown {uid} DIR && chmod 0700 DIR`, or set {LOCK_DIR_ENV} to such a directory",
        path.display()
    )]
    UnsafeDir {
        path: PathBuf,
        uid: u32,
        problem: String,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FleetLock {
    file: File,
    path: PathBuf,
}

impl FleetLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Where lock files live, checked (and created if missing): `$FLEET_LOCK_DIR`, else
/// `/run/fleet` for root, else `$XDG_RUNTIME_DIR/fleet`.
pub fn lock_dir() -> Result<PathBuf, LockError> {
    lock_dir_for(effective_uid(), &|name| std::env::var_os(name))
}

fn lock_dir_for(uid: u32, env: &dyn Fn(&str) -> Option<OsString>) -> Result<PathBuf, LockError> {
    let dir = match env(LOCK_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => default_lock_dir(uid, env("XDG_RUNTIME_DIR"))?,
    };
    prepare_dir(&dir, uid)?;
    Ok(dir)
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// `/run/fleet` for root, `$XDG_RUNTIME_DIR/fleet` for anyone else; never a shared directory
/// such as /tmp.
fn default_lock_dir(uid: u32, runtime_dir: Option<OsString>) -> Result<PathBuf, LockError> {
    if uid == 0 {
        return Ok(PathBuf::from("/run/fleet"));
    }
    match runtime_dir.filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir).join("fleet")),
        None => Err(LockError::NoLockDir { uid }),
    }
}

/// Creates `dir` with mode 0700 when it is missing (its parent must exist), then refuses it
/// unless it is a directory, not a link, owned by `uid`, and writable by no group or other user.
fn prepare_dir(dir: &Path, uid: u32) -> Result<(), LockError> {
    let create_error = |source| LockError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create_error(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(create_error)?;
    let problem = if meta.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("it is not a directory".to_string())
    } else if meta.uid() != uid {
        Some(format!("it is owned by uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "its mode is {:04o}: its group or other users can write it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(LockError::UnsafeDir {
            path: dir.to_path_buf(),
            uid,
            problem,
        }),
        None => Ok(()),
    }
}

/// Takes the lock of `fleet`, waiting up to `timeout`. `what` says who holds it (for the
/// message another process shows while it waits): the command and this process's id.
pub fn acquire(fleet: &str, what: &str, timeout: Duration) -> Result<FleetLock, LockError> {
    acquire_file(
        &lock_dir()?.join(format!("fleet-{fleet}.lock")),
        fleet,
        what,
        timeout,
    )
}

/// Opens the lock file read-write, creating it with mode 0600, never through a symbolic link.
fn open_lock_file(path: &Path) -> Result<File, LockError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                LockError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                LockError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err(LockError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        }),
        Err(source) => Err(LockError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn acquire_file(
    path: &Path,
    fleet: &str,
    what: &str,
    timeout: Duration,
) -> Result<FleetLock, LockError> {
    let path = path.to_path_buf();
    let mut file = open_lock_file(&path)?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let holder = holder(&mut file);
                if started.elapsed() >= timeout {
                    return Err(LockError::Timeout {
                        fleet: fleet.to_string(),
                        holder,
                        waited_secs: started.elapsed().as_secs(),
                    });
                }
                if !announced {
                    tracing::warn!(
                        "fleet `{fleet}` is locked by {holder}; waiting up to {}s",
                        timeout.as_secs()
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::Error(source)) => {
                return Err(LockError::Open { path, source });
            }
        }
    }
    let note = format!(
        "{what} (pid {}) on {} since {}",
        std::process::id(),
        hostname(),
        humantime_now()
    );
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.write_all(note.as_bytes());
    let _ = file.flush();
    Ok(FleetLock { file, path })
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another fleet process".to_string()
    } else {
        text.to_string()
    }
}

/// Seconds since the epoch, as UTC `YYYY-MM-DD HH:MM:SS`.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_fails_naming_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet-zq.lock");
        let first =
            acquire_file(&path, "zq", "fleet apply", Duration::from_secs(1)).expect("first");
        let started = Instant::now();
        let second = acquire_file(&path, "zq", "fleet apply", Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(300));
        match second {
            Err(LockError::Timeout { holder, fleet, .. }) => {
                assert_eq!(fleet, "zq");
                assert!(holder.starts_with("fleet apply (pid "), "{holder}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(first);
        acquire_file(&path, "zq", "fleet apply", Duration::from_secs(1)).expect("free again");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn root_locks_in_run_fleet_others_in_their_runtime_dir_never_tmp() {
        assert_eq!(
            default_lock_dir(0, Some("/run/user/0".into())).expect("root"),
            Path::new("/run/fleet")
        );
        assert_eq!(
            default_lock_dir(1000, Some("/run/user/1000".into())).expect("user"),
            Path::new("/run/user/1000/fleet")
        );
        for unset in [None, Some(OsString::new())] {
            match default_lock_dir(1000, unset) {
                Err(e @ LockError::NoLockDir { uid: 1000 }) => {
                    assert!(e.to_string().contains("FLEET_LOCK_DIR"), "{e}")
                }
                other => panic!("expected NoLockDir, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_lock_dir_is_created_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("fleet");
        let env = |name: &str| (name == LOCK_DIR_ENV).then(|| dir.clone().into());
        assert_eq!(lock_dir_for(effective_uid(), &env).expect("lock dir"), dir);
        assert_eq!(mode_of(&dir), 0o700);
        // Its parent must exist: fleet creates one directory, not a path.
        let deep = tmp.path().join("missing/fleet");
        assert!(matches!(
            prepare_dir(&deep, effective_uid()),
            Err(LockError::CreateDir { .. })
        ));
    }

    #[test]
    fn a_lock_dir_others_can_write_or_own_is_refused_fleet_lock_dir_too() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("locks");
        std::fs::create_dir(&dir).expect("dir");
        let uid = effective_uid();
        for mode in [0o770, 0o720, 0o702, 0o1777] {
            set_mode(&dir, mode);
            let env = |name: &str| (name == LOCK_DIR_ENV).then(|| dir.clone().into());
            match lock_dir_for(uid, &env) {
                Err(e @ LockError::UnsafeDir { .. }) => {
                    assert!(e.to_string().contains("can write it"), "{mode:o}: {e}")
                }
                other => panic!("mode {mode:o}: expected UnsafeDir, got {other:?}"),
            }
        }
        set_mode(&dir, 0o700);
        prepare_dir(&dir, uid).expect("private");
        set_mode(&dir, 0o755);
        prepare_dir(&dir, uid).expect("readable by others is fine");
        match prepare_dir(&dir, uid + 1) {
            Err(e @ LockError::UnsafeDir { .. }) => {
                assert!(
                    e.to_string().contains(&format!("owned by uid {uid}")),
                    "{e}"
                )
            }
            other => panic!("expected UnsafeDir for another owner, got {other:?}"),
        }
    }

    #[test]
    fn a_symbolic_link_is_refused_as_lock_dir_and_as_lock_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("dir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        match prepare_dir(&link, effective_uid()) {
            Err(e @ LockError::UnsafeDir { .. }) => {
                assert!(e.to_string().contains("symbolic link"), "{e}")
            }
            other => panic!("expected UnsafeDir for a link, got {other:?}"),
        }

        // A link planted where the lock file goes: fleet must not truncate what it points to.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let lock = real.join("fleet-zq.lock");
        std::os::unix::fs::symlink(&victim, &lock).expect("symlink");
        match acquire_file(&lock, "zq", "fleet apply", Duration::from_secs(1)) {
            Err(e @ LockError::Symlink { .. }) => {
                assert!(e.to_string().contains("remove the link"), "{e}")
            }
            other => panic!("expected Symlink, got {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
    }

    #[test]
    fn the_lock_file_is_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("fleet-zq.lock");
        let lock = acquire_file(&path, "zq", "fleet apply", Duration::from_secs(1)).expect("lock");
        assert_eq!(mode_of(lock.path()), 0o600);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(humantime_now().len(), "2026-11-28 18:30:08 UTC".len());
    }
}
