//! Docker endpoints (`hosts.<name>.docker`, or $DOCKER_HOST): the one reader of them, used by
//! `fleet validate` (src/spec/check/hosts.rs) and by connecting (src/endpoint.rs), so that
//! validation refuses exactly what connecting would.

use std::fmt;
use std::net::IpAddr;

/// A host's Docker endpoint, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// `unix:///path`: a socket on the machine fleet runs on.
    Unix { path: String },
    /// `ssh://[user@]host[:port]`: OpenSSH to the host, then `docker system dial-stdio`. The
    /// user and host are handed to `ssh` as arguments: neither starts with `-`.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
    /// `tcp://host:port`: TLS when the host has `tls`, else plain (loopback only).
    Tcp { host: String, port: u16 },
    /// `http://host:port`: plain HTTP (loopback only).
    Http { host: String, port: u16 },
}

/// How an endpoint is reached once `tls` and `insecure` are taken into account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Unix {
        path: String,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
    /// `host` is a DNS name or an IP address (without brackets).
    Tls {
        host: String,
        port: u16,
    },
    PlainLoopback {
        ip: IpAddr,
        port: u16,
    },
}

/// Which of a host's fields an endpoint refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Docker,
    Tls,
    Insecure,
}

/// Why `tls` or `insecure` do not fit an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: Field,
    pub message: String,
    pub help: Option<&'static str>,
}

impl Refusal {
    fn new(field: Field, message: impl Into<String>) -> Refusal {
        Refusal {
            field,
            message: message.into(),
            help: None,
        }
    }

    fn help(self, help: &'static str) -> Refusal {
        Refusal {
            help: Some(help),
            ..self
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match self.help {
            Some(help) => write!(f, " ({help})"),
            None => Ok(()),
        }
    }
}

impl DockerEndpoint {
    /// Reads an endpoint; the error says what was expected.
    pub fn parse(text: &str) -> Result<DockerEndpoint, String> {
        // Messages quote parts of the endpoint: bounded, so is each of them.
        let length = text.chars().count();
        if length > MAX_ENDPOINT {
            return Err(format!(
                "expected an endpoint of at most {MAX_ENDPOINT} characters, found {length}"
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(EXPECTED.into());
        };
        match scheme {
            "unix" if rest.starts_with('/') && rest.len() > 1 => Ok(DockerEndpoint::Unix {
                path: rest.to_string(),
            }),
            "unix" if rest.is_empty() => Err("expected unix:///absolute/path, found no path".into()),
            "unix" => Err("expected unix:///absolute/path, found a relative path".into()),
            "ssh" => parse_ssh(rest),
            "tcp" | "http" => {
                let (host, port) = host_and_port(rest)?;
                let port =
                    port.ok_or_else(|| format!("expected {scheme}://HOST:PORT, found no port"))?;
                Ok(if scheme == "tcp" {
                    DockerEndpoint::Tcp { host, port }
                } else {
                    DockerEndpoint::Http { host, port }
                })
            }
            "https" => Err(
                "https:// is not a Docker endpoint scheme: write tcp://HOST:PORT and give the certificates in `tls`"
                    .into(),
            ),
            _ => Err(EXPECTED.into()),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            DockerEndpoint::Unix { .. } => "unix",
            DockerEndpoint::Ssh { .. } => "ssh",
            DockerEndpoint::Tcp { .. } => "tcp",
            DockerEndpoint::Http { .. } => "http",
        }
    }

    /// How fleet reaches this endpoint with the host's `tls` (set or not) and `insecure`. Plain
    /// TCP is allowed only when `insecure` and to a loopback IP address written as one: a name
    /// such as `localhost` is resolved by whatever resolver the machine has.
    pub fn transport(&self, tls: bool, insecure: bool) -> Result<Transport, Refusal> {
        let (host, port) = match self {
            DockerEndpoint::Unix { path } => {
                refuse_tls_and_insecure(self.scheme(), tls, insecure)?;
                return Ok(Transport::Unix { path: path.clone() });
            }
            DockerEndpoint::Ssh { user, host, port } => {
                refuse_tls_and_insecure(self.scheme(), tls, insecure)?;
                return Ok(Transport::Ssh {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                });
            }
            DockerEndpoint::Tcp { host, port } | DockerEndpoint::Http { host, port } => {
                (host, *port)
            }
        };
        match (tls, insecure, self) {
            (true, _, DockerEndpoint::Http { .. }) => Err(Refusal::new(
                Field::Tls,
                "`tls` is only for tcp:// endpoints (http:// is plain HTTP)",
            )),
            (true, true, _) => Err(Refusal::new(
                Field::Insecure,
                "expected `tls` or `insecure: true`, found both",
            )
            .help("remove `insecure`: the connection uses TLS")),
            (true, false, _) => Ok(Transport::Tls {
                host: host.clone(),
                port,
            }),
            (false, false, _) => Err(Refusal::new(
                Field::Docker,
                format!(
                    "expected TLS for a {}:// endpoint, found none: whoever reaches it controls the engine (the Docker API is root on its host)",
                    self.scheme()
                ),
            )
            .help("add `tls: { ca: PATH, cert: PATH, key: PATH }` with tcp://, or for an engine on this machine's loopback `insecure: true`")),
            (false, true, _) => loopback(host, port),
        }
    }
}

fn refuse_tls_and_insecure(scheme: &str, tls: bool, insecure: bool) -> Result<(), Refusal> {
    if tls {
        return Err(Refusal::new(
            Field::Tls,
            format!("`tls` is only for tcp:// endpoints, not {scheme}://"),
        ));
    }
    if insecure {
        return Err(Refusal::new(
            Field::Insecure,
            format!("`insecure` applies to tcp:// and http:// endpoints only, not {scheme}://"),
        ));
    }
    Ok(())
}

fn loopback(host: &str, port: u16) -> Result<Transport, Refusal> {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(Transport::PlainLoopback { ip, port }),
        _ => Err(Refusal::new(
            Field::Insecure,
            format!("`insecure: true` is accepted only for a loopback IP address written as one (127.0.0.0/8 or [::1]), found {host:?}"),
        )
        .help("give the engine TLS certificates in `tls` and use tcp://")),
    }
}

impl fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerEndpoint::Unix { path } => write!(f, "unix://{path}"),
            DockerEndpoint::Ssh { user, host, port } => {
                f.write_str("ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                write_host(f, host)?;
                match port {
                    Some(port) => write!(f, ":{port}"),
                    None => Ok(()),
                }
            }
            DockerEndpoint::Tcp { host, port } | DockerEndpoint::Http { host, port } => {
                write!(f, "{}://", self.scheme())?;
                write_host(f, host)?;
                write!(f, ":{port}")
            }
        }
    }
}

fn write_host(f: &mut fmt::Formatter<'_>, host: &str) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]")
    } else {
        f.write_str(host)
    }
}

/// The longest endpoint read; real ones are a few dozen characters.
const MAX_ENDPOINT: usize = 256;

const EXPECTED: &str = "expected a Docker endpoint: unix:///path, ssh://[user@]host[:port], tcp://host:port or http://host:port";

fn parse_ssh(rest: &str) -> Result<DockerEndpoint, String> {
    let (user, hostport) = match rest.split_once('@') {
        Some((user, hostport)) => {
            if !is_ssh_user(user) {
                return Err(format!(
                    "expected ssh://[user@]host[:port] with a user of letters, digits, '.', '_' and '-', not starting with '-', found user {user:?}"
                ));
            }
            (Some(user.to_string()), hostport)
        }
        None => (None, rest),
    };
    let (host, port) = host_and_port(hostport)?;
    Ok(DockerEndpoint::Ssh { user, host, port })
}

/// A login name as POSIX portable user names allow; it is handed to `ssh -l`.
fn is_ssh_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, and nothing after: Docker takes no path here.
fn host_and_port(text: &str) -> Result<(String, Option<u16>), String> {
    if text.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "expected only a host and a port after the scheme (Docker takes no path here), found {text:?}"
        ));
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("expected `]` after the IPv6 address in {text:?}"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "expected an IPv6 address in brackets, found {addr:?}"
            ));
        }
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => {
                    return Err(format!(
                        "expected `:PORT` after `[{addr}]`, found {after:?}"
                    ));
                }
            },
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("expected a host name or address, found none".into());
    }
    if !host.contains(':') && !is_host_name(host) {
        return Err(format!(
            "expected a host name of letters, digits, '.' and '-', not starting with '-' or '.', found {host:?}"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("expected a port from 1 to 65535, found {p:?}")),
        },
    };
    Ok((host.to_string(), port))
}

/// A DNS name (RFC 1123: no `_`) or an IPv4 address. It may not start with `-`: `ssh` would
/// read it as an option.
fn is_host_name(host: &str) -> bool {
    !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> DockerEndpoint {
        DockerEndpoint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn every_scheme_reads_and_prints_back() {
        for text in [
            "unix:///var/run/docker.sock",
            "ssh://pve-vm.lan",
            "ssh://ci@pve-vm.lan",
            "ssh://ci@10.0.0.2:2222",
            "ssh://[fe80::1]:22",
            "tcp://tower.lan:2376",
            "tcp://127.0.0.1:2375",
            "tcp://[::1]:2375",
            "http://localhost:2375",
        ] {
            assert_eq!(ok(text).to_string(), text);
        }
    }

    /// What `validate` and connecting both make of an endpoint with `tls` and `insecure`:
    /// `Ok` with the transport, or `Err` with a part of the reason.
    #[test]
    fn one_table_of_edge_cases() {
        let tcp_tls = |host: &str, port| {
            Ok(Transport::Tls {
                host: host.into(),
                port,
            })
        };
        let plain = |ip: &str, port| {
            Ok(Transport::PlainLoopback {
                ip: ip.parse().expect("ip"),
                port,
            })
        };
        let ssh = |user: Option<&str>, host: &str, port| {
            Ok(Transport::Ssh {
                user: user.map(str::to_string),
                host: host.into(),
                port,
            })
        };
        let table: Vec<(&str, bool, bool, Result<Transport, &str>)> = vec![
            // (endpoint, tls, insecure, expected)
            (
                "unix:///var/run/docker.sock",
                false,
                false,
                Ok(Transport::Unix {
                    path: "/var/run/docker.sock".into(),
                }),
            ),
            ("unix://run/docker.sock", false, false, Err("relative path")),
            (
                "unix:///var/run/docker.sock",
                true,
                false,
                Err("`tls` is only for tcp://"),
            ),
            (
                "unix:///var/run/docker.sock",
                false,
                true,
                Err("`insecure` applies"),
            ),
            (
                "ssh://pve-vm.lan",
                false,
                false,
                ssh(None, "pve-vm.lan", None),
            ),
            (
                "ssh://ci@10.0.0.7:2222",
                false,
                false,
                ssh(Some("ci"), "10.0.0.7", Some(2222)),
            ),
            (
                "ssh://ci@[fd00::7]:22",
                false,
                false,
                ssh(Some("ci"), "fd00::7", Some(22)),
            ),
            (
                "ssh://ci@host",
                true,
                false,
                Err("`tls` is only for tcp://"),
            ),
            // ssh options smuggled as a host or a user
            ("ssh://-F", false, false, Err("not starting with '-'")),
            (
                "ssh://-oProxyCommand=x",
                false,
                false,
                Err("not starting with '-'"),
            ),
            ("ssh://ci@-G", false, false, Err("not starting with '-'")),
            ("ssh://-lroot@h", false, false, Err("user \"-lroot\"")),
            (
                "ssh://ci@host name",
                false,
                false,
                Err("a host name of letters"),
            ),
            ("ssh://ci@", false, false, Err("found none")),
            ("ssh://@host", false, false, Err("user")),
            (
                "ssh://ci@.host",
                false,
                false,
                Err("not starting with '-' or '.'"),
            ),
            (
                "ssh://a@b@host",
                false,
                false,
                Err("only a host and a port"),
            ),
            (
                "ssh://ci@host/path",
                false,
                false,
                Err("only a host and a port"),
            ),
            (
                "ssh://ci@host/",
                false,
                false,
                Err("only a host and a port"),
            ),
            ("ssh://[fd00::7", false, false, Err("expected `]`")),
            ("ssh://[zz]:22", false, false, Err("IPv6")),
            // `_` is no part of a DNS name
            (
                "ssh://build_box",
                false,
                false,
                Err("a host name of letters"),
            ),
            (
                "tcp://tower_1.lan:2376",
                true,
                false,
                Err("a host name of letters"),
            ),
            // ports
            ("ssh://host:0", false, false, Err("from 1 to 65535")),
            ("ssh://host:65536", false, false, Err("from 1 to 65535")),
            (
                "ssh://host:65535",
                false,
                false,
                ssh(None, "host", Some(65535)),
            ),
            ("tcp://tower:+1", true, false, Err("from 1 to 65535")),
            ("tcp://tower:", true, false, Err("from 1 to 65535")),
            ("tcp://tower.lan", true, false, Err("found no port")),
            (
                "tcp://tower.lan:2376",
                true,
                false,
                tcp_tls("tower.lan", 2376),
            ),
            (
                "tcp://[fd00::9]:2376",
                true,
                false,
                tcp_tls("fd00::9", 2376),
            ),
            (
                "tcp://tower.lan:2376/",
                true,
                false,
                Err("only a host and a port"),
            ),
            (
                "https://tower.lan:2376",
                true,
                false,
                Err("not a Docker endpoint scheme"),
            ),
            ("http://tower.lan:2376", true, false, Err("plain HTTP")),
            ("tcp://127.0.0.1:2376", true, true, Err("found both")),
            // plain TCP: insecure, and a loopback IP address written as one
            ("tcp://tower.lan:2375", false, false, Err("expected TLS")),
            ("tcp://127.0.0.1:2375", false, false, Err("expected TLS")),
            ("http://127.0.0.1:2375", false, false, Err("expected TLS")),
            (
                "tcp://127.0.0.1:2375",
                false,
                true,
                plain("127.0.0.1", 2375),
            ),
            ("tcp://127.3.2.1:9", false, true, plain("127.3.2.1", 9)),
            ("http://[::1]:2375", false, true, plain("::1", 2375)),
            (
                "tcp://localhost:2375",
                false,
                true,
                Err("loopback IP address written as one"),
            ),
            (
                "http://LOCALHOST:2375",
                false,
                true,
                Err("loopback IP address written as one"),
            ),
            (
                "tcp://10.0.0.7:2375",
                false,
                true,
                Err("loopback IP address"),
            ),
            (
                "tcp://0.0.0.0:2375",
                false,
                true,
                Err("loopback IP address"),
            ),
            ("tcp://[::2]:2375", false, true, Err("loopback IP address")),
            (
                "tcp://localhost.evil.com:2375",
                false,
                true,
                Err("loopback IP address"),
            ),
            // other schemes and shapes
            (
                "npipe:////./pipe/docker",
                false,
                false,
                Err("expected a Docker endpoint"),
            ),
            (
                "/var/run/docker.sock",
                false,
                false,
                Err("expected a Docker endpoint"),
            ),
            ("tcp://:2375", true, false, Err("found none")),
        ];
        for (text, tls, insecure, expected) in table {
            let got = DockerEndpoint::parse(text)
                .and_then(|e| e.transport(tls, insecure).map_err(|r| r.to_string()));
            match (&got, &expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(why), Err(part)) => assert!(why.contains(part), "{text}: {why}"),
                _ => panic!(
                    "{text} (tls {tls}, insecure {insecure}): got {got:?}, expected {expected:?}"
                ),
            }
        }
    }

    #[test]
    fn long_endpoints_are_refused_before_they_are_quoted() {
        let e = DockerEndpoint::parse(&format!("tcp://{}:1", "a".repeat(300))).expect_err("long");
        assert!(e.contains("at most 256 characters, found 308"), "{e}");
    }
}
