//! `fleet schema`: the JSON Schema of fleet.yaml.

use super::{Done, Failure, print_stdout};
use crate::spec;

/// `generate`: the schema made from fleet's types rather than the built-in copy.
pub fn run(generate: bool) -> Result<Done, Failure> {
    let text = if generate {
        spec::schema::generate()
    } else {
        spec::schema::SCHEMA_JSON.to_string()
    };
    print_stdout(&text)
}
