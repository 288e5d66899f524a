//! Checks of `hosts`: GPU inventories, Docker endpoints, TLS and `insecure`.

use std::path::Path;

use super::files::{FileRole, check_file};
use super::{Checker, escape_pointer};
use crate::spec::diag::shorten;
use crate::spec::endpoint::{DockerEndpoint, Field, Transport};
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
    // The same check as connecting (src/docker/endpoint/): what passes here is what fleet reaches.
    match endpoint.transport(host.tls.is_some(), insecure) {
        Ok(Transport::Tls { .. }) => {
            let Some(tls) = &host.tls else { return };
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
        }
        Ok(_) => {}
        Err(refusal) => {
            let message = format!("{at}: {}", refusal.message);
            let help = match refusal.field {
                Field::Docker => c.at_value(&format!("{ptr}/docker"), message),
                // `tls` is a mapping: point at its key.
                Field::Tls => c.at_key(&format!("{ptr}/tls"), message),
                Field::Insecure => c.at_value(&format!("{ptr}/insecure"), message),
            };
            if let Some(text) = refusal.help {
                help.help(text);
            }
        }
    }
}
