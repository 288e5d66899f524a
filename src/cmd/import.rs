//! `fleet import`: a fleet.yaml written from docker-compose files (the rules are in `import/`).

use super::{Done, Failure};
use crate::import::ImportArgs;

pub fn run(args: &ImportArgs) -> Result<Done, Failure> {
    crate::import::run(args).map_err(Failure::Import)?;
    Ok(Done::Ok)
}
