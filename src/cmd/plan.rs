//! `fleet plan`: what apply would change, printed (and saved with `--out`).

use std::path::Path;

use super::{Done, Failure, HostSelection, env_var, print_stdout, runtime, stdout_color};
use crate::github::RetryPolicy;
use crate::observe::Observers;
use crate::plan::{self, Plan};
use crate::render::{self, Format};
use crate::spec::{self, Spec};

/// Output formats of `fleet plan` and `fleet show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

impl From<PlanFormat> for Format {
    fn from(format: PlanFormat) -> Format {
        match format {
            PlanFormat::Text => Format::Text,
            PlanFormat::Json => Format::Json,
            PlanFormat::Markdown => Format::Markdown,
        }
    }
}

/// Loads the spec, observes the world (but the excluded hosts) and plans.
pub(crate) async fn observe_and_plan(
    file: &Path,
    spec: &Spec,
    hosts: &HostSelection,
) -> Result<Plan, Failure> {
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let observers = Observers::connect_excluding(
        spec,
        base_dir,
        &env_var,
        RetryPolicy::default(),
        &hosts.excluded(),
    )
    .await
    .map_err(Failure::Observe)?;
    let observed = observers.observe(spec).await.map_err(Failure::Observe)?;
    tracing::debug!("GitHub requests made: {}", observers.github.stats().total());
    plan::plan(spec, &observed).map_err(Failure::Plan)
}

pub fn run(
    file: &Path,
    out: Option<&Path>,
    format: Format,
    detailed_exitcode: bool,
    hosts: &HostSelection,
) -> Result<Done, Failure> {
    let spec = spec::load(file).map_err(Failure::Spec)?;
    hosts.announce();
    let plan = runtime()?.block_on(observe_and_plan(file, &spec, hosts))?;
    let color = format == Format::Text && stdout_color();
    let mut text = render::render(&plan, format, color);
    if let Some(out) = out {
        std::fs::write(out, render::json(&plan.document())).map_err(|e| {
            Failure::Other(format!("cannot write the plan to {}: {e}", out.display()))
        })?;
        if format == Format::Text {
            text.push_str(&format!(
                "\nSaved the plan to {}. `fleet show {}` prints it again.\n",
                out.display(),
                out.display()
            ));
        }
    }
    print_stdout(&text)?;
    Ok(if detailed_exitcode && !plan.is_empty() {
        Done::Changes
    } else {
        Done::Ok
    })
}
