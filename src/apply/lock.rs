//! One apply, destroy or watch of a fleet at a time on this machine: an exclusive lock on a
//! file, held from the observation to the end of the apply. The kernel releases it when the
//! holder exits, `kill -9` included, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "fleet `{fleet}` is locked by {holder}; gave up after {waited_secs} s (--lock-timeout)"
    )]
    Timeout {
        fleet: String,
        holder: String,
        waited_secs: u64,
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

/// Where lock files live: $FLEET_LOCK_DIR, else the system's temporary directory.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("FLEET_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Takes the lock of `fleet`, waiting up to `timeout`. `what` says who holds it (for the
/// message another process shows while it waits): the command and this process's id.
pub fn acquire(fleet: &str, what: &str, timeout: Duration) -> Result<FleetLock, LockError> {
    acquire_file(
        &lock_dir().join(format!("fleet-{fleet}.lock")),
        fleet,
        what,
        timeout,
    )
}

fn acquire_file(
    path: &Path,
    fleet: &str,
    what: &str,
    timeout: Duration,
) -> Result<FleetLock, LockError> {
    let path = path.to_path_buf();
    let open_error = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(open_error)?;
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
            Err(TryLockError::Error(e)) => return Err(open_error(e)),
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".into())
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

    #[test]
    fn dates_are_civil() {
        assert_eq!(humantime_now().len(), "2026-11-28 18:30:08 UTC".len());
    }
}
