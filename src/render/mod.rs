//! One `Plan`, three views: text for people (like `terraform plan`), JSON for programs,
//! markdown for a pull-request comment. Each renders the plan's JSON document, so a plan saved
//! with `--out` prints exactly as it did when it was made.

use std::fmt::Write;

use anstyle::{AnsiColor, Style};
use similar::{ChangeTag, TextDiff};

use crate::plan::{
    Action, AttributeChange, AutoscalePool, ChangeDocument, Plan, PlanDocument, Summary, Waiting,
};

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
/// Control characters in the plan's words (a saved plan is anyone's input) are shown escaped,
/// never sent to the terminal.
pub fn text(plan: &PlanDocument, color: bool) -> String {
    let plan = &without_controls(plan);
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
                    match change.pool.as_str() {
                        "" => "  # GitHub runner scale sets".to_string(),
                        pool => format!("  # GitHub runner scale sets, pool {pool}"),
                    }
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
    if !plan.autoscale.is_empty() {
        let _ = writeln!(out, "\n{}", p.bold("Autoscaled pools:"));
        for pool in &plan.autoscale {
            let _ = writeln!(out, "  {}", autoscale_line(pool));
        }
    }
    if !plan.backoff.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            p.paint(
                AnsiColor::Yellow,
                true,
                "Backing off (runners that cannot start):"
            )
        );
        for pool in &plan.backoff {
            let _ = writeln!(
                out,
                "  {} {}",
                p.paint(AnsiColor::Yellow, false, "~"),
                pool.line()
            );
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
            Action::Destroy | Action::DeleteScaleSet => "removed with it",
            Action::Defer if change.deferred == Some(Action::Destroy) => "removed with it",
            _ => "kept",
        };
        let _ = writeln!(out, "      state:  volume {volume} ({fate})");
    }
    if change.registration_kept {
        let _ = writeln!(
            out,
            "      registration: kept (the runner registers again under its name on its new host)"
        );
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

/// One autoscaled pool as the plan leaves it.
pub fn autoscale_line(pool: &AutoscalePool) -> String {
    let mut line = match pool.assigned {
        Some(jobs) => format!(
            "pool {} (scale set {}): {jobs} job(s) assigned, wants {}, will have {}",
            pool.pool, pool.scale_set, pool.wanted, pool.runners
        ),
        None => format!(
            "pool {} (scale set {}): {} runner(s), kept between min_idle {} and max {} (fleet watch follows the jobs)",
            pool.pool, pool.scale_set, pool.runners, pool.min_idle, pool.max
        ),
    };
    if let Some((jobs, why)) = pool.waiting {
        let why = match why {
            Waiting::NoFreeGpu => "no free GPU",
            Waiting::AtMax => "the pool is at max",
            Waiting::Acquiring => "being acquired (the pool has room)",
        };
        let _ = write!(line, "; {jobs} job(s) wait: {why}");
    }
    line
}

/// The markdown view for a pull-request comment: a summary table, the plan in a collapsible
/// `diff` block, and the warnings.
///
/// Everything in a plan may come from whoever opened the pull request (the spec's names and
/// images, a saved plan file), so no value may change the comment's structure or ping anyone:
/// values are made single-line and free of control characters (`one_line`), those outside the
/// `diff` block are code spans (`code`), where GitHub renders no HTML, link or mention, and the
/// block's fence is longer than any run of backticks inside it (docs/security.md).
pub fn markdown(plan: &PlanDocument) -> String {
    let plan = &for_markdown(plan);
    let mut out = format!("### fleet plan for {}\n\n", code(&plan.fleet));
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
        let body = diff_body(plan);
        let fence = "`".repeat(longest_backtick_run(&body).max(2) + 1);
        let _ = writeln!(
            out,
            "<details><summary>{} change(s)</summary>\n\n{fence}diff",
            plan.changes.len()
        );
        out.push_str(&body);
        let _ = writeln!(out, "{fence}\n\n</details>");
    }
    if !plan.warnings.is_empty() {
        out.push_str("\n> [!WARNING]\n");
        for w in &plan.warnings {
            let _ = writeln!(out, "> - {}", code(w));
        }
    }
    if !plan.autoscale.is_empty() {
        out.push_str("\n**Autoscaled pools**\n\n");
        for pool in &plan.autoscale {
            let _ = writeln!(out, "- {}", code(&autoscale_line(pool)));
        }
    }
    if !plan.backoff.is_empty() {
        out.push_str("\n**Backing off (runners that cannot start)**\n\n");
        for pool in &plan.backoff {
            let _ = writeln!(out, "- {}", code(&pool.line()));
        }
    }
    let short = |hash: &str| code(&hash.chars().take(12).collect::<String>());
    let _ = writeln!(
        out,
        "\n<sub>spec {} · observed {}</sub>",
        short(&plan.spec_hash),
        short(&plan.observed_fingerprint)
    );
    out
}

/// The changes as the text view prints them, each change's symbol moved to the first column,
/// where `diff` highlighting looks (`!` for a replace); the lines under it stay indented.
fn diff_body(plan: &PlanDocument) -> String {
    let p = Palette { color: false };
    let mut text = String::new();
    for change in &plan.changes {
        change_text(&mut text, change, &p);
    }
    let mut body = String::new();
    for line in text.lines() {
        let line = match line.strip_prefix("  ") {
            Some(rest) if rest.starts_with("-/+ ") => format!("! {}", &rest[4..]),
            Some(rest) if ["+ ", "- ", "~ "].iter().any(|s| rest.starts_with(s)) => {
                rest.to_string()
            }
            _ => line.to_string(),
        };
        let _ = writeln!(body, "{line}");
    }
    body
}

/// A copy of `plan` whose values are safe to place in markdown: every value on one line (a
/// newline could start a line that looks like a change of its own), no control character (a
/// carriage return ends a line too) and no bidirectional override. Multi-line attribute values
/// keep their newlines: the diff prints each of their lines indented.
fn for_markdown(plan: &PlanDocument) -> PlanDocument {
    let mut plan = plan.clone();
    let lines = |s: &mut String| *s = s.split('\n').map(one_line).collect::<Vec<_>>().join("\n");
    for text in [
        &mut plan.fleet,
        &mut plan.spec_hash,
        &mut plan.observed_fingerprint,
    ] {
        *text = one_line(text);
    }
    plan.warnings.iter_mut().for_each(|w| *w = one_line(w));
    for change in &mut plan.changes {
        for text in [&mut change.pool, &mut change.host, &mut change.name] {
            *text = one_line(text);
        }
        change.reasons.iter_mut().for_each(|r| *r = one_line(r));
        change.gpus.iter_mut().for_each(|g| *g = one_line(g));
        if let Some(replacement) = &mut change.replacement {
            *replacement = one_line(replacement);
        }
        for attr in &mut change.diff {
            attr.attribute = one_line(&attr.attribute);
            attr.before.iter_mut().for_each(lines);
            lines(&mut attr.after);
        }
    }
    plan
}

/// `text` with control characters (newlines included) and bidirectional controls written as
/// visible escapes (`\n`, `\u{202e}`): the one escaping function, src/escape.rs.
fn one_line(text: &str) -> String {
    crate::escape::escaped(text).into_owned()
}

/// `text` as an inline code span: GitHub renders no HTML, link, mention or issue reference
/// inside one, and its fence is longer than any run of backticks in `text`, so nothing closes
/// it early. `text` must be on one line (`one_line`).
fn code(text: &str) -> String {
    let fence = "`".repeat(longest_backtick_run(text) + 1);
    // A space inside each end, which markdown strips again, keeps a backtick at either end of
    // `text` from joining the fence.
    let pad = text.is_empty() || text.starts_with(['`', ' ']) || text.ends_with(['`', ' ']);
    if pad {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests;

/// Control characters (but the newline) and bidirectional overrides, which make a terminal act
/// or make text read other than it is.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The document with every unsafe character in its words written as an escape (`\u{1b}`): a
/// terminal must not act on what a plan says.
fn without_controls(plan: &PlanDocument) -> PlanDocument {
    let clean = |s: &mut String| {
        if s.chars().any(is_unsafe) {
            *s = s
                .chars()
                .map(|c| match c {
                    c if is_unsafe(c) => c.escape_unicode().to_string(),
                    c => c.to_string(),
                })
                .collect();
        }
    };
    let mut plan = plan.clone();
    clean(&mut plan.fleet);
    plan.warnings.iter_mut().for_each(clean);
    for change in &mut plan.changes {
        for field in [&mut change.pool, &mut change.host, &mut change.name] {
            clean(field);
        }
        change.reasons.iter_mut().for_each(clean);
        change.gpus.iter_mut().for_each(clean);
        for field in [
            &mut change.replacement,
            &mut change.container_id,
            &mut change.state_volume,
        ] {
            field.iter_mut().for_each(clean);
        }
        for attr in &mut change.diff {
            clean(&mut attr.attribute);
            clean(&mut attr.after);
            attr.before.iter_mut().for_each(clean);
        }
    }
    for pool in &mut plan.autoscale {
        clean(&mut pool.pool);
        clean(&mut pool.scale_set);
    }
    for pool in &mut plan.backoff {
        clean(&mut pool.pool);
    }
    plan
}
