//! Names: runner (= container) names, their suffixes, the pool a name belongs to, and the
//! state volume of a persistent runner.

use super::hash::full_hash;

/// Length of the random suffix of an ephemeral runner's name.
pub const SUFFIX_LEN: usize = 6;

const SUFFIX_DIGITS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `<fleet>-<pool>-<suffix>`: the name of a runner, of its container and of its registration.
pub fn runner_name(fleet: &str, pool: &str, suffix: &str) -> String {
    format!("{fleet}-{pool}-{suffix}")
}

/// A persistent runner's name: its pool's prefix and its index.
pub fn persistent_name(fleet: &str, pool: &str, index: usize) -> String {
    runner_name(fleet, pool, &index.to_string())
}

/// The index of a persistent runner's name (`<fleet>-<pool>-<n>`), if it is one: decimal,
/// without leading zeros.
pub fn persistent_index(fleet: &str, pool: &str, name: &str) -> Option<usize> {
    let rest = name.strip_prefix(&format!("{fleet}-{pool}-"))?;
    let canonical = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
        && (rest == "0" || !rest.starts_with('0'));
    canonical.then(|| rest.parse().ok()).flatten()
}

/// Six characters of [a-z0-9] derived from `seed`: every one of the 36 digits can appear.
pub fn suffix(seed: &str) -> String {
    let hash = full_hash(seed.as_bytes());
    let mut n = u64::from_str_radix(&hash[..15], 16).unwrap_or(0);
    (0..SUFFIX_LEN)
        .map(|_| {
            let d = SUFFIX_DIGITS[(n % 36) as usize] as char;
            n /= 36;
            d
        })
        .collect()
}

/// The pool a runner name belongs to: the longest of `pools` with `<fleet>-<pool>-` as prefix.
pub fn pool_from_name<'a>(
    fleet: &str,
    name: &str,
    pools: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    pools
        .into_iter()
        .filter(|p| name.starts_with(&format!("{fleet}-{p}-")))
        .max_by_key(|p| p.len())
}

/// The name of a persistent runner's state volume.
pub fn state_volume(runner: &str) -> String {
    format!("{runner}-state")
}

/// The name of the (empty) volume that records the quarantine of GPU `uuid`.
pub fn gpu_quarantine_record(fleet: &str, uuid: &str) -> String {
    let uuid: String = uuid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{fleet}-gpu-quarantine.{uuid}")
}

/// The name of the (empty) volume that records pool `pool`'s runner scale set.
pub fn scale_set_record(fleet: &str, pool: &str) -> String {
    format!("{fleet}-{pool}.scale-set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_use_the_whole_alphabet() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let s = suffix(&format!("seed-{i}"));
            assert_eq!(s.len(), SUFFIX_LEN);
            seen.extend(s.chars());
        }
        assert_eq!(seen.len(), 36, "every digit of [a-z0-9] appears: {seen:?}");
    }

    #[test]
    fn persistent_indexes_are_canonical_numbers_of_that_pool() {
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-0"), Some(0));
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-12"), Some(12));
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-012"), None);
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-x-0"), None);
        assert_eq!(persistent_index("ci", "gpu-x", "ci-gpu-x-0"), Some(0));
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-abc123"), None);
        assert_eq!(persistent_index("ci", "gpu", "ci-gpu-"), None);
    }

    #[test]
    fn the_longest_matching_pool_wins() {
        let pools = ["gpu", "gpu-x", "cpu"];
        assert_eq!(pool_from_name("ci", "ci-gpu-x-0", pools), Some("gpu-x"));
        assert_eq!(pool_from_name("ci", "ci-gpu-abc123", pools), Some("gpu"));
        assert_eq!(pool_from_name("ci", "other-gpu-0", pools), None);
    }
}
