//! `fleet validate`: the spec checked, nothing contacted.

use super::{Done, Failure, print_stdout};
use crate::spec;

pub fn run(file: &std::path::Path) -> Result<Done, Failure> {
    match spec::load(file) {
        Ok(spec) => {
            let pools = spec.resolved_pools();
            let runners: u32 = pools.iter().map(|p| p.count).sum();
            let hosts = spec.effective_hosts().len();
            print_stdout(&format!(
                "{} is valid: fleet `{}`, {} pool(s), {} runner(s) on {} host(s).\n",
                file.display(),
                spec.name,
                pools.len(),
                runners,
                hosts
            ))
        }
        Err(e) => Err(Failure::Invalid(e)),
    }
}
