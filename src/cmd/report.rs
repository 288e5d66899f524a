//! `fleet report`: what the history of `fleet watch` says of a time range.

use std::path::Path;

use super::{Done, Failure, print_stdout};
use crate::history::report::ReportArgs;

pub fn run(file: &Path, args: &ReportArgs) -> Result<Done, Failure> {
    let text = crate::history::report::command(file, args).map_err(Failure::Other)?;
    print_stdout(&text)
}
