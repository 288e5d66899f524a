//! `fleet apply`: the world made to match fleet.yaml (or a saved plan, only as it was made).

use std::path::Path;

use super::converge::converge;
use super::{Done, Failure, HostSelection, RunOptions};
use crate::apply::Run;
use crate::plan;

pub fn run(
    file: &Path,
    saved: Option<&Path>,
    auto_approve: bool,
    options: &RunOptions,
    hosts: &HostSelection,
) -> Result<Done, Failure> {
    converge(
        file,
        options,
        hosts,
        Run::Apply,
        |spec, observed| {
            let fresh = plan::plan(spec, observed).map_err(Failure::Plan)?;
            match saved {
                None => Ok((fresh, true)),
                // A saved plan was reviewed when it was made: it is applied without asking,
                // and only as it was made.
                Some(path) => plan::check_saved(path, spec, observed, &fresh)
                    .map(|()| (fresh, false))
                    .map_err(|e| Failure::Other(e.to_string())),
            }
        },
        auto_approve || saved.is_some(),
    )
}
