//! The report `fleet import` prints on stderr: what became of every service and of every setting
//! that was not carried over as it was. It names variables, never their values.

use std::fmt::Write as _;

/// What happened to one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// fleet.yaml says something compose did not say the same way; the line has a comment.
    Decided,
    /// A secret was dropped.
    Removed,
    /// Read to decide something (scope, labels, GPUs), not copied: fleet sets it itself.
    Consumed,
    /// fleet does this itself (restarts, names).
    Handled,
    /// Not in fleet.yaml: fleet has no such setting, or it cannot be carried over as it is.
    LeftOut,
    /// Carried over, but it will not work as it did without a change.
    Warning,
}

impl Tag {
    fn label(self) -> &'static str {
        match self {
            Tag::Decided => "decided",
            Tag::Removed => "removed",
            Tag::Consumed => "consumed",
            Tag::Handled => "handled",
            Tag::LeftOut => "left out",
            Tag::Warning => "warning",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub tag: Tag,
    pub text: String,
}

impl Finding {
    pub fn new(tag: Tag, text: impl Into<String>) -> Finding {
        Finding {
            tag,
            text: text.into(),
        }
    }
}

/// What became of one compose service.
#[derive(Debug, Clone)]
pub struct ServiceReport {
    /// The compose file, as shown to the user.
    pub file: String,
    pub service: String,
    /// The pool it became, or `None` when it is not a runner.
    pub pool: Option<String>,
    /// Why it was taken for a runner, or why not.
    pub why: String,
    pub findings: Vec<Finding>,
}

/// Everything `fleet import` has to say.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each compose file read, with its project name and file-level findings.
    pub files: Vec<(String, String, Vec<Finding>)>,
    pub services: Vec<ServiceReport>,
    /// Decisions about the fleet as a whole: its name, where it registers.
    pub fleet: Vec<Finding>,
}

impl Report {
    /// Counts of findings with `tag`, over every service.
    pub fn count(&self, tag: Tag) -> usize {
        self.services
            .iter()
            .flat_map(|s| &s.findings)
            .chain(&self.fleet)
            .filter(|f| f.tag == tag)
            .count()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (file, project, findings) in &self.files {
            let _ = writeln!(out, "fleet import: {file} (compose project `{project}`)");
            findings_text(&mut out, findings);
            for service in self.services.iter().filter(|s| &s.file == file) {
                match &service.pool {
                    Some(pool) => {
                        let _ = writeln!(
                            out,
                            "  service `{}` -> pool `{pool}` ({})",
                            service.service, service.why
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "  service `{}`: left out, not a runner ({})",
                            service.service, service.why
                        );
                    }
                }
                findings_text(&mut out, &service.findings);
            }
        }
        if !self.fleet.is_empty() {
            out.push_str("fleet:\n");
            findings_text(&mut out, &self.fleet);
        }
        let runners = self.services.iter().filter(|s| s.pool.is_some()).count();
        let others = self.services.len() - runners;
        let _ = writeln!(
            out,
            "Summary: {runners} runner service(s) imported, {others} other service(s) left out, {} secret(s) removed, {} setting(s) left out, {} warning(s).",
            self.count(Tag::Removed),
            self.count(Tag::LeftOut),
            self.count(Tag::Warning),
        );
        out.push_str(
            "Read every commented line of the fleet.yaml, then run `fleet validate` and `fleet plan`.\n",
        );
        out
    }
}

fn findings_text(out: &mut String, findings: &[Finding]) {
    for f in findings {
        let _ = writeln!(out, "    {:<9} {}", f.tag.label(), f.text);
    }
}
