//! Reading a file whose path comes from input (a TLS file or the App key named in the spec, a
//! file a compose file names): whoever opens a pull request chooses the path, and `fleet plan`
//! reads it on the control machine. So only a regular file outside `/proc`, `/sys` and `/dev`
//! is read, opened without blocking (a FIFO cannot hang fleet), and never more than a cap;
//! and what went wrong is told to the operator's log, while the error says only "not usable",
//! so that a plan's output (a pull-request comment) says nothing about what exists on the
//! control machine, its type or its mode.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The most read of a key or a certificate: real ones are a few KiB.
pub const KEY_CAP: u64 = 64 * 1024;

/// The one message for a named file that cannot be used, whatever the reason.
pub const NOT_USABLE: &str = "not usable (the reason is in fleet's log: run with -v)";

/// Why a named file was not read: for the operator's log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: PathBuf,
    pub detail: String,
}

impl Refused {
    fn new(path: &Path, detail: impl Into<String>) -> Refused {
        Refused {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// Logs the detail (at info: `-v` shows it) for `what` and returns [`NOT_USABLE`].
    pub fn logged(&self, what: &str) -> &'static str {
        tracing::info!(
            "{what} {}: {}",
            crate::escape::escaped(&self.path.display().to_string()),
            self.detail
        );
        NOT_USABLE
    }
}

/// The pseudo file systems whose files are not data: `/proc/self/pagemap` is a "regular file"
/// of gigabytes, device nodes block or never end.
const REFUSED_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Opens `path` as a regular file outside [`REFUSED_TREES`] (after following symbolic links).
pub fn open(path: &Path) -> Result<std::fs::File, Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = path
        .canonicalize()
        .map_err(|e| Refused::new(path, format!("cannot resolve it: {e}")))?;
    if REFUSED_TREES.iter().any(|tree| real.starts_with(tree)) {
        return Err(Refused::new(
            path,
            format!(
                "it is under {} (fleet reads no file of /proc, /sys or /dev)",
                real.display()
            ),
        ));
    }
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| Refused::new(path, format!("cannot open it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Refused::new(path, format!("cannot read its metadata: {e}")))?;
    if !meta.is_file() {
        return Err(Refused::new(path, "it is not a regular file"));
    }
    Ok(file)
}

/// Reads `path` whole when it is a regular file of at most `cap` bytes (see [`open`]).
/// Blocking: async callers run it with `tokio::task::spawn_blocking`.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, Refused> {
    let file = open(path)?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refused::new(path, format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(Refused::new(path, format!("it is larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// The file's permission bits, read from the opened file (see [`open`]).
pub fn mode(path: &Path) -> Result<u32, Refused> {
    use std::os::unix::fs::PermissionsExt;
    let file = open(path)?;
    let meta = file
        .metadata()
        .map_err(|e| Refused::new(path, format!("cannot read its metadata: {e}")))?;
    Ok(meta.permissions().mode() & 0o7777)
}

/// Reads a private key: as [`read_capped`] with [`KEY_CAP`], and refused when its group or
/// others may read or write it.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, Refused> {
    let mode = mode(path)?;
    if mode & 0o077 != 0 {
        return Err(Refused::new(
            path,
            format!(
                "expected a private key readable by its owner only (mode 0600 or stricter), found mode {mode:04o}"
            ),
        ));
    }
    read_capped(path, KEY_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pseudo_files_devices_fifos_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let link = dir.path().join("link-to-pagemap");
        std::os::unix::fs::symlink("/proc/self/pagemap", &link).expect("symlink");
        for (path, detail) in [
            (Path::new("/proc/self/pagemap"), "under /proc"),
            (Path::new("/proc/self/environ"), "under /proc"),
            (link.as_path(), "under /proc"),
            (Path::new("/sys/kernel/notes"), "under /sys"),
            (Path::new("/dev/zero"), "under /dev"),
            (fifo.as_path(), "not a regular file"),
            (dir.path(), "not a regular file"),
            (Path::new("/nonexistent/key.pem"), "cannot resolve"),
        ] {
            let refused = read_capped(path, KEY_CAP).expect_err(&path.display().to_string());
            assert!(
                refused.detail.contains(detail),
                "{}: {}",
                path.display(),
                refused.detail
            );
            assert_eq!(refused.logged("TLS client key"), NOT_USABLE);
        }
    }

    #[test]
    fn files_are_read_up_to_the_cap_and_keys_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small.pem");
        std::fs::write(&small, b"pem").expect("write");
        assert_eq!(read_capped(&small, 3).expect("read"), b"pem");
        let refused = read_capped(&small, 2).expect_err("too long");
        assert!(
            refused.detail.contains("larger than 2 bytes"),
            "{}",
            refused.detail
        );
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = read_private_key(&small).expect_err("public key file");
        assert!(
            refused.detail.contains("found mode 0644"),
            "{}",
            refused.detail
        );
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_private_key(&small).expect("private"), b"pem");
    }
}
