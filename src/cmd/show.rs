//! `fleet show`: a saved plan printed again.

use std::path::Path;

use super::{Done, Failure, print_stdout, stdout_color};
use crate::plan;
use crate::render::{self, Format};

pub fn run(path: &Path, format: Format) -> Result<Done, Failure> {
    let saved = plan::read_saved(path).map_err(|e| Failure::Other(e.to_string()))?;
    let color = format == Format::Text && stdout_color();
    print_stdout(&render::render_document(&saved, format, color))
}
