//! Files the spec points at: the App's private key, a Docker host's TLS files.

use std::path::Path;

use super::Checker;
use crate::named_file;

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

/// Checks that `path` is a usable file (src/named_file.rs: a regular file outside `/proc`,
/// `/sys` and `/dev`, that opens), and a private one for a key. Whatever is wrong, the message
/// says only that the file is not usable: the spec chose the path, and validation output (a
/// pull-request comment) must not tell whether a path exists, its type or its mode. The
/// reason goes to the log.
pub(super) fn check_file(
    c: &mut Checker,
    pointer: &str,
    path: &Path,
    role: &FileRole,
    context: &str,
) {
    let what = &role.what;
    let checked = if role.private {
        named_file::read_private_key(path).map(|_| ())
    } else {
        named_file::read_capped(path, named_file::KEY_CAP).map(|_| ())
    };
    if let Err(refused) = checked {
        let not_usable = refused.logged(what);
        c.at_value(
            pointer,
            format!(
                "{context}the {what} file {} is {not_usable}",
                path.display()
            ),
        )
        .help(if role.private {
            "name a regular file of at most 64 KiB, readable by fleet's user only (chmod 600)"
        } else {
            "name a regular file of at most 64 KiB that fleet's user can read"
        });
    }
}
