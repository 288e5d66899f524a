//! The engine on a Unix socket.

use super::*;

/// A client of the engine listening on `path`; `secs`: bollard's per-request timeout.
pub(super) fn open(path: &Path, secs: u64) -> Result<Docker, bollard::errors::Error> {
    let path = path.to_string_lossy();
    Docker::connect_with_unix(&path, secs, API_DEFAULT_VERSION)
}
