//! Who holds a GPU that no runner holds: a process's container, read from the host's process
//! table (`/proc/PID/cgroup`), or "a host process" (docs/gpu-health.md). Read only: fleet never
//! signals a process of its own accord.

use std::path::Path;

pub use crate::state::ProcessHolder;

/// The holder of `pid` from the process table under `proc_root` (`/proc` on a host).
pub fn holder_of(pid: u32, proc_root: &Path) -> ProcessHolder {
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) {
        Ok(text) => holder_from_cgroup(&text),
        Err(_) => ProcessHolder::Unseen,
    }
}

/// A container id in a process's cgroup paths: Docker's `/docker/ID` (cgroupfs driver),
/// `/system.slice/docker-ID.scope` (systemd driver), and the same forms of other runtimes
/// (`cri-containerd-ID.scope`). No id: a host process.
pub fn holder_from_cgroup(text: &str) -> ProcessHolder {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = part.rsplit('-').next().unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return ProcessHolder::Container {
                    id: id.to_ascii_lowercase(),
                    name: None,
                };
            }
        }
    }
    ProcessHolder::Host
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

    #[test]
    fn a_container_is_found_under_each_cgroup_driver_and_anything_else_is_the_host() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:memory:/docker/{ID}\n0::/\n"),
            format!("0::/kubepods/besteffort/pod1/cri-containerd-{ID}.scope\n"),
        ] {
            assert_eq!(holder_from_cgroup(&text).container_id(), Some(ID), "{text}");
        }
        for text in [
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/\n",
            "",
            "garbage without colons",
        ] {
            assert_eq!(holder_from_cgroup(text), ProcessHolder::Host, "{text}");
        }
    }

    #[test]
    fn a_process_not_in_the_table_is_unseen_and_a_listed_one_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(holder_of(4242, dir.path()), ProcessHolder::Unseen);
        std::fs::create_dir_all(dir.path().join("4242")).expect("dir");
        std::fs::write(dir.path().join("4242/cgroup"), format!("0::/docker/{ID}\n"))
            .expect("write");
        let holder = holder_of(4242, dir.path());
        assert_eq!(holder.container_id(), Some(ID));
        assert!(
            holder
                .describe()
                .contains("docker ps --filter id=3f2a1b4c5d6e"),
            "{holder:?}"
        );
    }
}
