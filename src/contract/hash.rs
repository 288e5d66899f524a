//! Hashes of configurations, specs and observations.

use sha2::{Digest, Sha256};

/// 16 hex digits of SHA-256: enough to tell configurations and states apart.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex(&digest[..8])
}

/// Full SHA-256 in hex.
pub fn full_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Full SHA-256 in hex of a value's JSON, the same as `full_hash` of `serde_json::to_vec`,
/// streamed into the hash: an observation of 10,000 runners is megabytes of JSON.
pub fn full_json_hash<T: serde::Serialize>(value: &T) -> String {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(Sha256::new());
    // Serializing these types cannot fail (string keys only), and the writer never does.
    let _ = serde_json::to_writer(&mut writer, value);
    hex(&writer.0.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_json_hash_is_the_hash_of_the_json() {
        let value = serde_json::json!({
            "runner": "zquic-ci-gpu-0",
            "labels": ["self-hosted", "gpu", "quote\"and\\backslash"],
            "nested": {"count": 3, "none": null, "unicode": "é"},
        });
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        assert!(!bytes.is_empty());
        assert_eq!(full_json_hash(&value), full_hash(&bytes));
    }

    #[test]
    fn short_hash_is_the_start_of_the_full_hash() {
        assert_eq!(short_hash(b"x"), full_hash(b"x")[..16]);
    }
}
