//! Memory limits as Docker reads them: a number of bytes with an optional unit.

use super::diag::quote;

/// Docker's smallest memory limit for a container (6 MiB); the engine refuses less.
pub const MIN_MEMORY_BYTES: i64 = 6 << 20;

/// `16g` -> bytes. Units b, k, m, g (any case, powers of 1024, as Docker reads them); no unit
/// means bytes. `None` when the text is not such a size or does not fit in an i64 (Docker's
/// type for it). It does not apply Docker's minimum: [`memory_problem`] does.
pub fn parse_memory(text: &str) -> Option<i64> {
    let (digits, factor): (&str, i64) = match text.as_bytes().last()?.to_ascii_lowercase() {
        b'b' => (&text[..text.len() - 1], 1),
        b'k' => (&text[..text.len() - 1], 1 << 10),
        b'm' => (&text[..text.len() - 1], 1 << 20),
        b'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(factor)
}

/// What is wrong with `text` as a pool's memory limit, if anything.
pub fn memory_problem(text: &str) -> Option<String> {
    match parse_memory(text) {
        None => Some(format!(
            "expected a memory limit such as 512m or 16g of at most {}g, found {}",
            i64::MAX >> 30,
            quote(text)
        )),
        Some(bytes) if bytes < MIN_MEMORY_BYTES => Some(format!(
            "expected a memory limit of at least 6m (Docker's minimum), found {text:?} ({bytes} bytes)"
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_units() {
        assert_eq!(parse_memory("16g"), Some(16 << 30));
        assert_eq!(parse_memory("16G"), Some(16 << 30));
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("2K"), Some(2048));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("1024b"), Some(1024));
        assert_eq!(parse_memory("0"), Some(0));
    }

    #[test]
    fn not_sizes() {
        for text in [
            "", "g", "x", "16 g", " 16g", "16gb", "1.5g", "-1g", "+1g", "16t", "１g",
        ] {
            assert_eq!(parse_memory(text), None, "{text:?}");
        }
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        let most = i64::MAX >> 30;
        assert_eq!(parse_memory(&format!("{most}g")), Some(most << 30));
        assert_eq!(parse_memory(&format!("{}g", most + 1)), None);
        assert_eq!(parse_memory("99999999999999999999g"), None);
        assert_eq!(parse_memory("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_memory("9223372036854775808"), None);
    }

    #[test]
    fn problems() {
        assert_eq!(memory_problem("6m"), None);
        assert_eq!(memory_problem("16g"), None);
        let small = memory_problem("4m").expect("too small");
        assert!(small.contains("at least 6m"), "{small}");
        let zero = memory_problem("0").expect("zero");
        assert!(zero.contains("at least 6m"), "{zero}");
        let huge = memory_problem("99999999999999999999g").expect("too large");
        assert!(huge.contains("at most 8589934591g"), "{huge}");
    }
}
