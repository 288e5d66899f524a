//! The machine fleet runs on, as the lock file and the scale sets' owner name it.

/// This machine's host name, or "this machine" when the kernel does not say.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".into())
}
