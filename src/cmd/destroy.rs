//! `fleet destroy`: every runner of the fleet removed.

use std::path::Path;

use super::converge::converge;
use super::{Done, Failure, HostSelection, RunOptions};
use crate::apply::Run;
use crate::plan;

pub fn run(
    file: &Path,
    auto_approve: bool,
    volumes: bool,
    options: &RunOptions,
    hosts: &HostSelection,
) -> Result<Done, Failure> {
    converge(
        file,
        options,
        hosts,
        Run::Destroy,
        |spec, observed| {
            plan::plan_destroy(spec, observed, volumes)
                .map(|p| (p, true))
                .map_err(Failure::Plan)
        },
        auto_approve,
    )
}
