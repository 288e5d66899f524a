//! The progress of an apply or destroy on stdout: each step as it starts and ends, like
//! terraform, with a bar on a terminal.

use std::io::IsTerminal;

use crate::apply::{Outcome, Progress, StepReport};
use crate::plan::Action;

/// Prints each step as it starts and ends, like terraform; a bar on a terminal.
pub(crate) struct ProgressPrinter {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressPrinter {
    pub(crate) fn new(steps: usize) -> ProgressPrinter {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed}")
            {
                bar.set_style(style);
            }
            bar
        });
        ProgressPrinter { bar }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub(crate) fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn verbs(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Create => ("Creating...", "Created"),
        Action::Replace => ("Replacing...", "Replaced"),
        Action::Destroy => ("Destroying...", "Destroyed"),
        Action::Deregister => ("Removing registration...", "Registration removed"),
        Action::CreateVolume => ("Creating volume...", "Volume created"),
        Action::DestroyVolume => ("Destroying volume...", "Volume destroyed"),
        Action::UpdateRegistration => ("Updating registration...", "Registration updated"),
        Action::CreateScaleSet => ("Creating scale set...", "Scale set created"),
        Action::UpdateScaleSet => ("Updating scale set...", "Scale set updated"),
        Action::DeleteScaleSet => ("Deleting scale set...", "Scale set deleted"),
        Action::Defer => ("", "Deferred"),
    }
}

impl Progress for ProgressPrinter {
    fn started(&self, action: Action, name: &str) {
        let (doing, _) = verbs(action);
        if !doing.is_empty() {
            self.say(format!("{name}: {doing}"));
        }
    }

    fn finished(&self, report: &StepReport) {
        let name = &report.name;
        let secs = report.elapsed.as_secs_f64();
        let line = match &report.outcome {
            Outcome::Done => {
                let (_, done) = verbs(report.action);
                match &report.runner {
                    Some(runner) if runner != name => {
                        format!("{name}: {done} by {runner} ({secs:.1}s)")
                    }
                    _ => format!("{name}: {done} ({secs:.1}s)"),
                }
            }
            Outcome::Deferred(why) => format!("{name}: Deferred: {why}"),
            Outcome::Failed(cause) => format!("{name}: Failed after {secs:.1}s: {cause}"),
        };
        self.say(line);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}
