//! Docker endpoints of `hosts.<name>.docker`, read the way fleet will connect to them.

use std::fmt;
use std::net::IpAddr;

/// A host's Docker endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// `unix:///path`: a socket on the machine fleet runs on.
    Unix { path: String },
    /// `ssh://[user@]host[:port]`: OpenSSH to the host, then `docker system dial-stdio`.
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
                let port = port.ok_or_else(|| format!("expected {scheme}://HOST:PORT, found no port"))?;
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

    /// A network endpoint (tcp://, http://), as opposed to a socket or SSH.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            DockerEndpoint::Tcp { .. } | DockerEndpoint::Http { .. }
        )
    }

    /// A tcp:// or http:// endpoint on a loopback address: 127.0.0.0/8, ::1 or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            DockerEndpoint::Tcp { host, .. } | DockerEndpoint::Http { host, .. } => {
                is_loopback_host(host)
            }
            _ => false,
        }
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
            if user.is_empty()
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(format!(
                    "expected ssh://[user@]host[:port] with a user of letters, digits, '.', '_' and '-', found user {user:?}"
                ));
            }
            (Some(user.to_string()), hostport)
        }
        None => (None, rest),
    };
    let (host, port) = host_and_port(hostport)?;
    Ok(DockerEndpoint::Ssh { user, host, port })
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
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "expected a host name of letters, digits, '.', '-' and '_', found {host:?}"
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

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
        assert_eq!(
            ok("ssh://ci@h:22"),
            DockerEndpoint::Ssh {
                user: Some("ci".into()),
                host: "h".into(),
                port: Some(22)
            }
        );
    }

    #[test]
    fn loopback_addresses() {
        for text in [
            "tcp://127.0.0.1:2375",
            "tcp://127.3.2.1:2375",
            "tcp://[::1]:2375",
            "http://localhost:2375",
            "http://LOCALHOST:1",
        ] {
            assert!(ok(text).is_loopback(), "{text}");
        }
        for text in [
            "tcp://10.0.0.1:2375",
            "tcp://tower.lan:2376",
            "tcp://localhost.evil.com:2375",
            "tcp://[::2]:2375",
            "tcp://128.0.0.1:1",
            "unix:///var/run/docker.sock",
            "ssh://localhost",
        ] {
            assert!(!ok(text).is_loopback(), "{text}");
        }
    }

    #[test]
    fn refused_endpoints_say_why() {
        for (text, why) in [
            ("https://tower:2376", "write tcp://HOST:PORT"),
            ("https://tower:2376", "tls"),
            ("tcp://tower", "found no port"),
            ("tcp://tower:0", "from 1 to 65535"),
            ("tcp://tower:99999", "from 1 to 65535"),
            ("tcp://tower:+1", "from 1 to 65535"),
            ("tcp://tower:2375/path", "only a host and a port"),
            ("tcp://:2375", "a host name"),
            ("tcp://a b:1", "a host name of letters"),
            ("ssh://@host", "user"),
            ("ssh://ci@host/path", "only a host and a port"),
            ("ssh://[zz]:22", "IPv6"),
            ("unix://relative.sock", "found a relative path"),
            ("unix://", "found no path"),
            ("ftp://x", "expected a Docker endpoint"),
            ("/var/run/docker.sock", "expected a Docker endpoint"),
            (
                &format!("tcp://{}:1", "a".repeat(300)),
                "at most 256 characters, found 308",
            ),
        ] {
            let e = DockerEndpoint::parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
