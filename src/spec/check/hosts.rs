//! Checks of `hosts`: GPU inventories, Docker endpoints, TLS and `insecure`.

use std::path::Path;

use super::files::{FileRole, check_file};
use super::{Checker, escape_pointer};
use crate::spec::diag::shorten;
use crate::spec::endpoint::DockerEndpoint;
use crate::spec::model::{Host, HostGpus};

pub(super) fn check_hosts(c: &mut Checker, base_dir: &Path) {
    let Some(hosts) = &c.spec.hosts else { return };
    if hosts.is_empty() {
        c.at_key("/hosts", "expected at least one host, found none")
            .help("remove `hosts` to use the local Docker engine");
    }
    for (name, host) in hosts {
        let ptr = format!("/hosts/{}", escape_pointer(name));
        if let HostGpus::Declared(uuids) = &host.gpus
            && uuids.is_empty()
        {
            c.at_value(
                &format!("{ptr}/gpus"),
                "expected at least one GPU UUID, found an empty list",
            )
            .help("write `gpus: none` for a host without GPUs");
        }
        check_endpoint(c, name, &ptr, host, base_dir);
    }
}

/// The endpoint, and `tls` and `insecure` as they fit it. Every message names the host and
/// its endpoint.
fn check_endpoint(c: &mut Checker, name: &str, ptr: &str, host: &Host, base_dir: &Path) {
    let insecure = host.insecure == Some(true);
    let Some(text) = &host.docker else {
        if c.scope.set_aside.contains(&format!("{ptr}/docker")) {
            return;
        }
        for (field, set) in [("tls", host.tls.is_some()), ("insecure", insecure)] {
            if set {
                c.at_key(
                    &format!("{ptr}/{field}"),
                    format!("host `{name}` sets `{field}` but no `docker` endpoint (its engine is $DOCKER_HOST or the local socket)"),
                )
                .help("write the engine's address in `docker: tcp://HOST:PORT`");
            }
        }
        return;
    };
    let at = format!("host `{name}` (docker: {})", shorten(text));
    let endpoint = match DockerEndpoint::parse(text) {
        Ok(endpoint) => endpoint,
        Err(why) => {
            c.at_value(&format!("{ptr}/docker"), format!("{at}: {why}"));
            return;
        }
    };
    if let Some(tls) = &host.tls {
        if !matches!(endpoint, DockerEndpoint::Tcp { .. }) {
            // Its files do not matter until the endpoint is one that uses them.
            c.at_key(
                &format!("{ptr}/tls"),
                format!("{at}: `tls` is only for tcp:// endpoints"),
            );
            return;
        }
        if insecure {
            c.at_key(
                &format!("{ptr}/insecure"),
                format!("{at}: expected `tls` or `insecure: true`, found both"),
            )
            .help("remove `insecure`: the connection uses TLS");
        }
        let context = format!("{at}: ");
        for (field, file, role) in [
            ("ca", &tls.ca, FileRole::public("TLS CA certificate")),
            (
                "cert",
                &tls.cert,
                FileRole::public("TLS client certificate"),
            ),
            ("key", &tls.key, FileRole::private("TLS client key")),
        ] {
            let pointer = format!("{ptr}/tls/{field}");
            check_file(c, &pointer, &base_dir.join(file), &role, &context);
        }
    } else if endpoint.is_network() && !insecure {
        c.at_value(
            &format!("{ptr}/docker"),
            format!("{at}: expected TLS for a {}:// endpoint, found none: whoever reaches it controls the engine", endpoint.scheme()),
        )
        .help("add `tls: { ca: PATH, cert: PATH, key: PATH }` with tcp://, or for an engine on this machine's loopback `insecure: true`");
    }
    if insecure && !endpoint.is_network() {
        c.at_value(
            &format!("{ptr}/insecure"),
            format!("{at}: `insecure` applies to tcp:// and http:// endpoints only"),
        );
    } else if insecure && host.tls.is_none() && !endpoint.is_loopback() {
        c.at_value(
            &format!("{ptr}/insecure"),
            format!("{at}: `insecure: true` is accepted only for a loopback address (127.0.0.0/8, ::1, localhost)"),
        )
        .help("give the engine TLS certificates in `tls` and use tcp://");
    }
}
