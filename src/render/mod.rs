//! One `Plan`, three views: text for people (like `terraform plan`), JSON for programs,
//! markdown for a pull-request comment. Each renders the plan's JSON document, so a plan saved
//! with `--out` prints exactly as it did when it was made.

use std::fmt::Write;

use anstyle::{AnsiColor, Style};
use similar::{ChangeTag, TextDiff};

use crate::plan::{Action, AttributeChange, ChangeDocument, Plan, PlanDocument, Summary};

/// The output formats of `plan` and `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// Renders `plan` in `format`; `color` applies to text only.
pub fn render(plan: &Plan, format: Format, color: bool) -> String {
    render_document(&plan.document(), format, color)
}

/// Renders a plan's document (a fresh plan's, or one read back from a file) in `format`.
pub fn render_document(plan: &PlanDocument, format: Format, color: bool) -> String {
    match format {
        Format::Text => text(plan, color),
        Format::Json => json(plan),
        Format::Markdown => markdown(plan),
    }
}

/// The JSON plan (format_version "1", docs/plan.md).
pub fn json(plan: &PlanDocument) -> String {
    let mut out = serde_json::to_string_pretty(plan).unwrap_or_default();
    out.push('\n');
    out
}

/// The sentence that ends every plan.
pub fn summary_line(summary: &Summary) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut line = format!(
        "Plan: {} to create, {} to replace, {} to destroy, {} to remove.",
        summary.create,
        summary.replace,
        summary.destroy,
        plural(summary.deregister, "registration", "registrations"),
    );
    let mut also = Vec::new();
    if summary.volumes > 0 {
        also.push(format!(
            "{} to create",
            plural(summary.volumes, "volume", "volumes")
        ));
    }
    if summary.destroy_volumes > 0 {
        also.push(format!(
            "{} to destroy",
            plural(summary.destroy_volumes, "volume", "volumes")
        ));
    }
    if summary.scale_sets > 0 {
        also.push(format!(
            "{} to change",
            plural(summary.scale_sets, "scale set", "scale sets")
        ));
    }
    if summary.update > 0 {
        also.push(format!(
            "{} to update",
            plural(summary.update, "registration", "registrations")
        ));
    }
    if summary.defer > 0 {
        also.push(format!(
            "{} deferred until busy runners finish their jobs",
            plural(summary.defer, "change", "changes")
        ));
    }
    if !also.is_empty() {
        let _ = write!(line, " Also: {}.", also.join(", "));
    }
    line
}

/// What `plan` prints when there is nothing to do.
pub const NO_CHANGES: &str = "No changes. The fleet matches fleet.yaml.";

struct Palette {
    color: bool,
}

impl Palette {
    fn paint(&self, color: AnsiColor, bold: bool, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let mut style = Style::new().fg_color(Some(color.into()));
        if bold {
            style = style.bold();
        }
        format!("{style}{text}{style:#}")
    }

    fn bold(&self, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let style = Style::new().bold();
        format!("{style}{text}{style:#}")
    }
}

fn symbol(action: Action) -> (&'static str, AnsiColor) {
    match action {
        Action::Create | Action::CreateVolume => ("+", AnsiColor::Green),
        Action::Destroy | Action::Deregister | Action::DestroyVolume => ("-", AnsiColor::Red),
        Action::Replace => ("-/+", AnsiColor::Yellow),
        Action::Defer => ("~", AnsiColor::Cyan),
        Action::UpdateRegistration | Action::UpdateScaleSet => ("~", AnsiColor::Yellow),
        Action::CreateScaleSet => ("+", AnsiColor::Green),
        Action::DeleteScaleSet => ("-", AnsiColor::Red),
    }
}

/// The text view: a block per host and pool, one entry per change, then warnings and the summary.
pub fn text(plan: &PlanDocument, color: bool) -> String {
    let p = Palette { color };
    let mut out = String::new();
    if plan.changes.is_empty() {
        let _ = writeln!(out, "{}", p.paint(AnsiColor::Green, true, NO_CHANGES));
    } else {
        let _ = writeln!(
            out,
            "fleet `{}` will make these changes. Symbols: {} create, {} destroy, {} replace, {} deferred.\n",
            plan.fleet,
            p.paint(AnsiColor::Green, false, "+"),
            p.paint(AnsiColor::Red, false, "-"),
            p.paint(AnsiColor::Yellow, false, "-/+"),
            p.paint(AnsiColor::Cyan, false, "~"),
        );
        let mut group: Option<(String, String)> = None;
        for change in &plan.changes {
            let this = (change.host.clone(), change.pool.clone());
            if group.as_ref() != Some(&this) {
                let heading = if change.action == Action::Deregister {
                    "  # GitHub registrations without a container".to_string()
                } else if change.action == Action::DestroyVolume {
                    format!("  # host {}, volumes", change.host)
                } else if matches!(
                    change.action,
                    Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet
                ) {
                    format!("  # GitHub runner scale sets, pool {}", change.pool)
                } else {
                    format!("  # host {}, pool {}", change.host, change.pool)
                };
                if group.is_some() {
                    out.push('\n');
                }
                let _ = writeln!(out, "{}", p.bold(&heading));
                group = Some(this);
            }
            change_text(&mut out, change, &p);
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "\n{}", p.paint(AnsiColor::Yellow, true, "Warnings:"));
        for w in &plan.warnings {
            let _ = writeln!(out, "  {} {w}", p.paint(AnsiColor::Yellow, false, "!"));
        }
    }
    if !plan.changes.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold(&summary_line(&plan.summary)));
    }
    out
}

fn change_text(out: &mut String, change: &ChangeDocument, p: &Palette) {
    let (sym, color) = symbol(change.action);
    let subject = match change.action {
        Action::CreateVolume | Action::DestroyVolume => format!("volume {}", change.name),
        Action::Deregister | Action::UpdateRegistration => {
            format!("registration {}", change.name)
        }
        Action::CreateScaleSet | Action::UpdateScaleSet | Action::DeleteScaleSet => {
            format!("scale set {}", change.name)
        }
        _ => format!("runner {}", change.name),
    };
    let mut head = format!("  {} {subject}", p.paint(color, true, sym));
    if let Some(id) = change.runner_id {
        let _ = write!(head, " (runner id {id})");
    }
    match (change.action, &change.replacement, change.deferred) {
        (Action::Replace, Some(new), _) => {
            let _ = write!(head, " -> {new}");
        }
        (Action::Defer, _, Some(what)) => {
            let _ = write!(head, ": {} after its job", what.as_str());
        }
        _ => {}
    }
    let _ = writeln!(out, "{head}");
    for reason in &change.reasons {
        let _ = writeln!(out, "      reason: {reason}");
    }
    if !change.gpus.is_empty() {
        let _ = writeln!(out, "      gpus:   {}", change.gpus.join(", "));
    }
    if let Some(volume) = &change.state_volume {
        let fate = match change.action {
            Action::Destroy => "removed with it",
            Action::Defer if change.deferred == Some(Action::Destroy) => "removed with it",
            _ => "kept",
        };
        let _ = writeln!(out, "      state:  volume {volume} ({fate})");
    }
    for attr in &change.diff {
        attribute_text(out, attr, p);
    }
}

fn attribute_text(out: &mut String, attr: &AttributeChange, p: &Palette) {
    let tilde = p.paint(AnsiColor::Yellow, false, "~");
    let before = attr.before.as_deref().unwrap_or("(unknown)");
    if !before.contains('\n') && !attr.after.contains('\n') {
        let _ = writeln!(
            out,
            "      {tilde} {}: {before:?} -> {:?}",
            attr.attribute, attr.after
        );
        return;
    }
    let _ = writeln!(out, "      {tilde} {}:", attr.attribute);
    let diff = TextDiff::from_lines(before, &attr.after);
    for change in diff.iter_all_changes() {
        let line = change.value().trim_end_matches('\n');
        let rendered = match change.tag() {
            ChangeTag::Delete => p.paint(AnsiColor::Red, false, &format!("- {line}")),
            ChangeTag::Insert => p.paint(AnsiColor::Green, false, &format!("+ {line}")),
            ChangeTag::Equal => format!("  {line}"),
        };
        let _ = writeln!(out, "          {rendered}");
    }
}

/// The markdown view for a pull-request comment: a summary table, the plan in a collapsible
/// `diff` block, and the warnings.
pub fn markdown(plan: &PlanDocument) -> String {
    let mut out = format!("### fleet plan for `{}`\n\n", plan.fleet);
    if plan.changes.is_empty() {
        let _ = writeln!(out, "**{NO_CHANGES}**");
    } else {
        let s = &plan.summary;
        out.push_str("| action | count |\n|---|---:|\n");
        for (name, n) in [
            ("create", s.create),
            ("replace", s.replace),
            ("destroy", s.destroy),
            ("deregister", s.deregister),
            ("create volume", s.volumes),
            ("defer (busy)", s.defer),
            ("destroy volume", s.destroy_volumes),
            ("update registration", s.update),
            ("scale set", s.scale_sets),
        ] {
            if n > 0 {
                let _ = writeln!(out, "| {name} | {n} |");
            }
        }
        let _ = writeln!(out, "\n**{}**\n", summary_line(s));
        let _ = writeln!(
            out,
            "<details><summary>{} change(s)</summary>\n\n```diff",
            plan.changes.len()
        );
        let p = Palette { color: false };
        let mut body = String::new();
        for change in &plan.changes {
            change_text(&mut body, change, &p);
        }
        // `diff` highlighting keys on the first column: move each change's symbol there
        // (`!` for a replace); the lines under it stay indented.
        for line in body.lines() {
            let line = match line.strip_prefix("  ") {
                Some(rest) if rest.starts_with("-/+ ") => format!("! {}", &rest[4..]),
                Some(rest) if ["+ ", "- ", "~ "].iter().any(|s| rest.starts_with(s)) => {
                    rest.to_string()
                }
                _ => line.to_string(),
            };
            let _ = writeln!(out, "{line}");
        }
        out.push_str("```\n\n</details>\n");
    }
    if !plan.warnings.is_empty() {
        out.push_str("\n> [!WARNING]\n");
        for w in &plan.warnings {
            let _ = writeln!(out, "> - {w}");
        }
    }
    let _ = writeln!(
        out,
        "\n<sub>spec `{}` · observed `{}`</sub>",
        &plan.spec_hash[..plan.spec_hash.len().min(12)],
        &plan.observed_fingerprint[..plan.observed_fingerprint.len().min(12)]
    );
    out
}

#[cfg(test)]
mod tests;
