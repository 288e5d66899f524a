//! Files the spec points at: the App's private key, a Docker host's TLS files.

use std::path::Path;

use super::Checker;

/// What a file is for, in messages, and whether it holds a private key.
pub(super) struct FileRole {
    what: String,
    private: bool,
}

impl FileRole {
    /// A private key: it must not be readable by group or others.
    pub(super) fn private(what: &str) -> FileRole {
        FileRole {
            what: what.to_string(),
            private: true,
        }
    }

    /// A public file (a certificate).
    pub(super) fn public(what: &str) -> FileRole {
        FileRole {
            what: what.to_string(),
            private: false,
        }
    }
}

/// Checks that `path` is a readable file, and a private one for a key; problems are reported
/// at the value of `pointer`, each message starting with `context`.
pub(super) fn check_file(
    c: &mut Checker,
    pointer: &str,
    path: &Path,
    role: &FileRole,
    context: &str,
) {
    let what = &role.what;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Err(e) => {
            c.at_value(
                pointer,
                format!("{context}expected a readable {what} file, found none at {shown}: {e}"),
            );
            return;
        }
        Ok(meta) => meta,
    };
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "something else (a socket, a pipe or a device)"
        };
        c.at_value(
            pointer,
            format!("{context}expected a file, found {kind} at {shown}"),
        );
        return;
    }
    // Opening proves it readable by this user (metadata alone does not).
    if let Err(e) = std::fs::File::open(path) {
        c.at_value(
            pointer,
            format!("{context}expected a readable {what} file, cannot open {shown}: {e}"),
        );
        return;
    }
    #[cfg(unix)]
    if role.private {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            c.at_value(
                pointer,
                format!(
                    "{context}expected a {what} readable by its owner only (mode 0600 or stricter), found mode {mode:04o} on {shown}"
                ),
            )
            .help(format!("chmod 600 {shown}"));
        }
    }
}
