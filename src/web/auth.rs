//! Who may read the status page: bearer tokens and bcrypt password hashes from a file
//! (`--listen-auth`). One entry a line; blank lines and lines starting with `#` are skipped:
//!
//! ```text
//! # a bearer token (sent as `Authorization: Bearer ...`), 16 characters at least
//! 9f2c0e7d5a8b4c1e93f6a2d7b0c4e8f1
//! # a user and a bcrypt hash of their password (HTTP Basic, which browsers ask for)
//! ops:$2b$12$...
//! ```

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Why the auth file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the listener's auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the listener's auth file {path} can be read by every user (mode {mode:o}); `chmod 600 {path}` and start again"
    )]
    WorldReadable { path: PathBuf, mode: u32 },
    #[error("{path}:{line}: {why}")]
    Entry {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    #[error("the listener's auth file {path} has no token and no password hash")]
    Empty { path: PathBuf },
}

/// The shortest bearer token accepted.
const MIN_TOKEN: usize = 16;

/// The credentials that open the page.
pub struct Auth {
    /// SHA-256 of each bearer token (compared digest to digest, so the comparison's time says
    /// nothing of the token).
    tokens: Vec<[u8; 32]>,
    /// User and bcrypt hash.
    users: Vec<(String, String)>,
    /// SHA-256 of `Authorization` headers whose password bcrypt verified: a page polling every
    /// few seconds does not pay bcrypt's cost each time.
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

impl Auth {
    /// Reads `path`, which no other user may read.
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|source| AuthError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                return Err(AuthError::WorldReadable {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Auth::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Auth, AuthError> {
        let mut auth = Auth {
            tokens: vec![],
            users: vec![],
            verified: Default::default(),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| AuthError::Entry {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            match line.split_once(':') {
                Some((user, hash)) if hash.starts_with("$2") => {
                    if user.is_empty() {
                        return Err(bad("a password hash needs a user name before the `:`"));
                    }
                    if hash.parse::<bcrypt::HashParts>().is_err() {
                        return Err(bad(
                            "not a bcrypt hash (`htpasswd -nbB USER PASSWORD` makes one)",
                        ));
                    }
                    auth.users.push((user.to_string(), hash.to_string()));
                }
                _ if line.len() < MIN_TOKEN || line.contains(char::is_whitespace) => {
                    return Err(bad(
                        "a bearer token is at least 16 characters without spaces (`openssl rand -hex 32` makes one)",
                    ));
                }
                _ => auth.tokens.push(digest(line.as_bytes())),
            }
        }
        if auth.tokens.is_empty() && auth.users.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(auth)
    }

    /// Whether an `Authorization` header value opens the page.
    pub fn allows(&self, header: &str) -> bool {
        if let Some(token) = header.strip_prefix("Bearer ") {
            let token = digest(token.trim().as_bytes());
            return self.tokens.iter().fold(false, |ok, t| ok | (*t == token));
        }
        let Some(encoded) = header.strip_prefix("Basic ") else {
            return false;
        };
        let key = digest(header.as_bytes());
        if self.verified.lock().is_ok_and(|v| v.contains(&key)) {
            return true;
        }
        let Some((user, password)) = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return false;
        };
        let ok = self
            .users
            .iter()
            .filter(|(u, _)| *u == user)
            .any(|(_, hash)| bcrypt::verify(&password, hash).unwrap_or(false));
        if ok && let Ok(mut verified) = self.verified.lock() {
            // Bounded: a file of few users sends few distinct headers.
            if verified.len() > 1024 {
                verified.clear();
            }
            verified.insert(key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let raw = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn tokens_and_bcrypt_passwords_open_the_page_and_nothing_else_does() {
        let hash = bcrypt::hash("s3cret pass", 4).expect("hash");
        let text = format!("# ops\n\n0123456789abcdef0123\nops:{hash}\n");
        let auth = Auth::parse(Path::new("auth"), &text).expect("parses");
        assert!(auth.allows("Bearer 0123456789abcdef0123"));
        assert!(!auth.allows("Bearer 0123456789abcdef012"));
        assert!(!auth.allows("0123456789abcdef0123"));
        assert!(auth.allows(&basic("ops", "s3cret pass")));
        assert!(auth.allows(&basic("ops", "s3cret pass")), "from the cache");
        assert!(!auth.allows(&basic("ops", "s3cret pas")));
        assert!(!auth.allows(&basic("dev", "s3cret pass")));
        assert!(!auth.allows("Basic !!!"));
        // The hash is not a token.
        assert!(!auth.allows(&format!("Bearer ops:{hash}")));
    }

    #[test]
    fn bad_entries_and_an_empty_file_are_refused_with_the_line() {
        for (text, says) in [
            ("short\n", "auth:1: a bearer token is at least 16"),
            ("# x\nops:$2b$12$nothash\n", "auth:2: not a bcrypt hash"),
            (
                ":$2b$04$abcdefghijklmnopqrstuu5Bd7aTo3A3IfT1T8nQ9Nn0QOZ5Qx8G\n",
                "auth:1: a password hash needs a user",
            ),
            ("# nothing\n", "has no token and no password hash"),
        ] {
            let e = Auth::parse(Path::new("auth"), text).err().expect("refused");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("auth");
        std::fs::write(&path, "0123456789abcdef0123\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Auth::load(&path).err().expect("refused");
        assert!(
            e.to_string()
                .contains("can be read by every user (mode 644)"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(Auth::load(&path).is_ok());
    }
}
