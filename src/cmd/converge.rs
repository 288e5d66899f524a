//! What apply and destroy share: the lock, the observation, the approval, the executor.

use std::io::{IsTerminal, Write};
use std::path::Path;

use super::progress::ProgressPrinter;
use super::{
    Done, Failure, HostSelection, RunOptions, env_var, print_stdout, runtime, stdout_color,
};
use crate::apply::{Outcome, Run, lock};
use crate::github::RetryPolicy;
use crate::observe::Observers;
use crate::plan::Plan;
use crate::render::{self, Format};
use crate::spec::{self, Spec};
use crate::state::Observed;

/// Asks for `yes` on a terminal; refuses without one unless approval was given.
pub(crate) fn approve(question: &str, auto_approve: bool) -> Result<bool, Failure> {
    if auto_approve {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Other(
            "not applying: stdin is not a terminal, so fleet cannot ask for approval; pass --auto-approve to apply without asking. Nothing was changed.".into(),
        ));
    }
    print!("\n{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::Other(format!("cannot read the answer: {e}")))?;
    Ok(answer.trim() == "yes")
}

/// Takes the lock, observes, and runs `decide` to get the plan to execute; `show` says whether
/// to print it first.
pub(crate) fn converge(
    file: &Path,
    options: &RunOptions,
    hosts: &HostSelection,
    run: Run,
    decide: impl FnOnce(&Spec, &Observed) -> Result<(Plan, bool), Failure>,
    auto_approve: bool,
) -> Result<Done, Failure> {
    let spec = spec::load(file).map_err(Failure::Spec)?;
    let command = match run {
        Run::Apply => "fleet apply",
        Run::Destroy => "fleet destroy",
    };
    let _lock = lock::acquire(&spec.name, command, options.lock_timeout)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let rt = runtime()?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    hosts.announce();
    let (observers, observed) = rt.block_on(async {
        let observers = Observers::connect_excluding(
            &spec,
            base_dir,
            &env_var,
            RetryPolicy::default(),
            &hosts.excluded(),
        )
        .await
        .map_err(Failure::Observe)?;
        let mut observed = observers.observe(&spec).await.map_err(Failure::Observe)?;
        observers.read_scale_sets(&spec, &mut observed).await;
        Ok::<_, Failure>((observers, observed))
    })?;
    let (plan, show) = decide(&spec, &observed)?;
    if show {
        let _ = print_stdout(&render::render(&plan, Format::Text, stdout_color()));
    }
    if plan.changes.is_empty() {
        if !plan.deferred.is_empty() {
            println!(
                "\nNothing to do now: {} change(s) wait for busy runners to finish their jobs.",
                plan.deferred.len()
            );
        }
        return Ok(Done::Ok);
    }
    let question = match run {
        Run::Apply => "Do you want to apply these changes?",
        Run::Destroy => "Do you really want to destroy every runner of this fleet?",
    };
    if !approve(question, auto_approve)? {
        println!("\nCancelled; nothing was changed.");
        return Ok(Done::Cancelled);
    }
    println!();
    let progress = ProgressPrinter::new(plan.len());
    let report = rt.block_on(crate::fanout::apply_by_host(
        &spec,
        &observers,
        &observed,
        &plan,
        usize::from(options.parallelism),
        &progress,
    ));
    progress.done();
    crate::history::record::record_apply(&spec.name, &options.history, run, &plan, &report);
    tracing::debug!("GitHub requests made: {}", observers.github.stats().total());
    println!("\n{}", report.summary(run));
    let failed: Vec<String> = report
        .failed()
        .filter_map(|step| match &step.outcome {
            Outcome::Failed(cause) => Some(format!("{}: {cause}", step.name)),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        Ok(Done::Ok)
    } else {
        Err(Failure::Steps(failed))
    }
}
