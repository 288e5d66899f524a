//! Snapshot tests of the three views, from plans the planner made.

use crate::contract::ownership_label;
use crate::observe::state::{ContainerStatus, GithubRunner};
use crate::plan::tests::{add_runner, empty_world, set_busy, with_pools};
use crate::plan::{PlanDocument as Plan, plan};

use super::*;

/// A plan with one change of every kind, and warnings.
fn busy_plan() -> Plan {
    let old = with_pools(
        "  gpu:\n    count: 2\n    image: arch-runner:2.329\n    gpus: 1\n    labels: [gpu]\n    env: { A: \"1\", B: \"2\" }\n  cpu:\n    count: 3\n    image: r:1\n  gone:\n    count: 1\n    image: r:1\n",
    );
    let new = with_pools(
        "  gpu:\n    count: 3\n    image: arch-runner:2.330\n    gpus: 1\n    labels: [gpu]\n    env: { A: \"1\", B: \"3\", C: \"4\" }\n    volumes: [{ source: zig-cache, target: /cache/zig }]\n  cpu:\n    count: 1\n    image: r:1\n    docker_socket: true\n",
    );
    let mut world = empty_world();
    add_runner(&mut world, &old, "gpu", "zq-gpu-aaaaaa", &["GPU-a"]);
    add_runner(&mut world, &old, "gpu", "zq-gpu-bbbbbb", &["GPU-b"]);
    add_runner(&mut world, &old, "cpu", "zq-cpu-aaaaaa", &[]);
    add_runner(&mut world, &old, "cpu", "zq-cpu-bbbbbb", &[]);
    add_runner(&mut world, &old, "cpu", "zq-cpu-cccccc", &[]);
    add_runner(&mut world, &old, "gone", "zq-gone-aaaaaa", &[]);
    set_busy(&mut world, "zq-gpu-bbbbbb");
    let host = world.hosts.get_mut("local").expect("host");
    for c in &mut host.containers {
        if c.name == "zq-cpu-cccccc" {
            c.status = ContainerStatus::Exited;
            c.exit_code = Some(0);
        }
    }
    world.github.runners.push(GithubRunner {
        id: 99,
        name: "zq-gpu-orphan".into(),
        online: false,
        busy: false,
        labels: vec![ownership_label("zq")],
        ..GithubRunner::default()
    });
    plan(&new, &world).expect("plan").document()
}

fn converged_plan() -> Plan {
    let spec = with_pools("  cpu:\n    count: 1\n    image: r:1\n");
    let mut world = empty_world();
    add_runner(&mut world, &spec, "cpu", "zq-cpu-aaaaaa", &[]);
    plan(&spec, &world).expect("plan").document()
}

#[test]
fn text_of_every_kind_of_change() {
    insta::assert_snapshot!(text(&busy_plan(), false));
}

#[test]
fn text_in_colour_paints_symbols() {
    let out = text(&busy_plan(), true);
    assert!(out.contains("\u{1b}["), "no ANSI escapes");
    // Stripped of colour, it is the plain text.
    let plain: String = strip_ansi(&out);
    assert_eq!(plain, text(&busy_plan(), false));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn text_when_nothing_changes() {
    insta::assert_snapshot!(text(&converged_plan(), false));
}

#[test]
fn json_of_every_kind_of_change() {
    insta::assert_snapshot!(json(&busy_plan()));
}

#[test]
fn json_when_nothing_changes() {
    insta::assert_snapshot!(json(&converged_plan()));
}

#[test]
fn json_has_the_designed_shape() {
    let value: serde_json::Value = serde_json::from_str(&json(&busy_plan())).expect("json");
    assert_eq!(value["format_version"], "1");
    assert_eq!(value["fleet"], "zq");
    for key in ["create", "replace", "destroy", "deregister", "volumes"] {
        assert!(value["summary"][key].is_u64(), "summary.{key}");
    }
    for change in value["changes"].as_array().expect("changes") {
        for key in ["action", "pool", "host", "name", "reasons", "gpus"] {
            assert!(change.get(key).is_some(), "change lacks {key}: {change}");
        }
    }
    assert!(value["warnings"].is_array());
    assert_eq!(value["spec_hash"].as_str().map(str::len), Some(64));
    assert_eq!(
        value["observed_fingerprint"].as_str().map(str::len),
        Some(64)
    );
    // Round trip: the saved plan reads back to the same value.
    let back: Plan = serde_json::from_value(value).expect("parse back");
    assert_eq!(back, busy_plan());
}

#[test]
fn markdown_of_every_kind_of_change() {
    insta::assert_snapshot!(markdown(&busy_plan()));
}

#[test]
fn markdown_when_nothing_changes() {
    insta::assert_snapshot!(markdown(&converged_plan()));
}

#[test]
fn summary_line_reads_like_terraform() {
    let plan = busy_plan();
    assert_eq!(
        summary_line(&plan.summary),
        "Plan: 1 to create, 2 to replace, 3 to destroy, 1 registration to remove. Also: 1 volume to create, 1 change deferred until busy runners finish their jobs."
    );
}

/// A plan whose values attack the markdown: HTML that would close `<details>` and run script,
/// backticks that would close the `diff` block or a code span, mentions, a newline and a
/// carriage return that would forge change lines of their own, a bidirectional override. A
/// saved plan file can carry any of these (`fleet show plan.json --format markdown`).
fn hostile_plan() -> Plan {
    let evil = "x</details><img src=x onerror=alert(1)>";
    let mut plan = busy_plan();
    plan.fleet = format!("zq`{evil}`@octocat");
    plan.spec_hash = "``</sub><img src=x>".into();
    plan.observed_fingerprint = "@everyone\n\n# heading".into();
    plan.warnings = vec![
        format!("pool `cpu` mounts {evil} @acme/admins #1 [click](https://evil.example) **now**"),
        "``` \n</details>\n\n@octocat\r\u{202e}desrever".into(),
    ];
    plan.changes[0].name = "zq-cpu-````".into();
    plan.changes[0]
        .reasons
        .push("image ```\n+ runner forged-runner\r- runner forged-too @octocat".into());
    for attr in plan.changes.iter_mut().flat_map(|c| c.diff.iter_mut()) {
        match attr.attribute.as_str() {
            "image" => attr.after = format!("{evil}```"),
            "env" => attr
                .after
                .push_str("\nEVIL=````\n```\n</details>\n@octocat\r+ runner forged-by-env"),
            _ => {}
        }
    }
    plan
}

#[test]
fn the_text_of_a_hostile_plan_sends_no_control_character_to_the_terminal() {
    let mut plan = hostile_plan();
    plan.changes[1].name = "x\u{1b}]0;title\u{7}y".into();
    plan.warnings.push("\u{1b}[2J cleared".into());
    let out = text(&plan, true);
    let unsafe_chars: Vec<char> = out
        .replace(['\u{1b}'], "")
        .chars()
        .filter(|&c| is_unsafe(c))
        .collect();
    assert!(unsafe_chars.is_empty(), "{unsafe_chars:?}");
    // The only escapes left are the palette's own colours.
    assert!(!out.contains("\u{1b}]0;"), "{out}");
    assert!(!out.contains("\u{1b}[2J"), "{out}");
    assert!(out.contains("x\\u{1b}]0;title\\u{7}y"), "{out}");
    assert!(out.contains("\\u{202e}desrever"), "{out}");
}

#[test]
fn markdown_of_a_hostile_plan() {
    insta::assert_snapshot!(markdown(&hostile_plan()));
}

#[test]
fn hostile_values_stay_inside_code() {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let md = markdown(&hostile_plan());
    let mut code_blocks = Vec::new();
    let mut in_block = false;
    let mut prose = String::new();
    for event in Parser::new_ext(&md, Options::ENABLE_TABLES | Options::ENABLE_GFM) {
        match event {
            Event::Start(Tag::CodeBlock(_)) => {
                in_block = true;
                code_blocks.push(String::new());
            }
            Event::End(TagEnd::CodeBlock) => in_block = false,
            Event::Text(text) if in_block => code_blocks.last_mut().expect("block").push_str(&text),
            Event::Text(text) => prose.push_str(&text),
            Event::Html(html) | Event::InlineHtml(html) => {
                let html = html.trim();
                assert!(
                    [
                        "<details><summary>9 change(s)</summary>",
                        "</details>",
                        "<sub>",
                        "</sub>"
                    ]
                    .contains(&html),
                    "HTML from a value: {html:?}\n{md}"
                );
            }
            Event::Start(Tag::Link { .. } | Tag::Image { .. }) => panic!("a link:\n{md}"),
            Event::Start(Tag::Heading { level, .. }) => {
                assert_eq!(level, HeadingLevel::H3, "a heading from a value:\n{md}")
            }
            _ => {}
        }
    }
    assert_eq!(
        code_blocks.len(),
        1,
        "one diff block, never closed early:\n{md}"
    );
    for needle in ["@", "<", "onerror", "forged", "desrever"] {
        assert!(!prose.contains(needle), "{needle:?} outside code: {prose}");
    }
    let block = &code_blocks[0];
    assert!(
        block.contains("onerror") && block.contains("@octocat"),
        "{block}"
    );
    for line in block.lines() {
        assert!(
            !line.starts_with("+ runner forged") && !line.starts_with("- runner forged"),
            "a forged change line: {line:?}"
        );
        assert!(
            !line.contains('\r') && !line.contains('\u{202e}'),
            "{line:?}"
        );
    }
}

#[test]
fn autoscaled_pools_say_what_they_want_have_and_wait_for() {
    let spec = with_pools(
        "  fixed:\n    count: 3\n    image: r:1\n    gpus: 1\n  auto:\n    image: r:1\n    gpus: 1\n    autoscale: { min_idle: 0, max: 8 }\n",
    );
    let mut world = empty_world();
    world.demand.insert(
        "auto".into(),
        crate::observe::state::PoolLoad {
            assigned: 3,
            queued: 2,
        },
    );
    let doc = plan(&spec, &world).expect("plan").document();
    let text = text(&doc, false);
    assert!(
        text.contains("Autoscaled pools:\n  pool auto (scale set zq-auto): 3 job(s) assigned, wants 3, will have 1; 4 job(s) wait: no free GPU"),
        "{text}"
    );
    assert!(markdown(&doc).contains("**Autoscaled pools**"));
    let without_demand = plan(&spec, &empty_world()).expect("plan").document();
    assert!(
        text_of(&without_demand)
            .contains("kept between min_idle 0 and max 8 (fleet watch follows the jobs)"),
        "{}",
        text_of(&without_demand)
    );
}

fn text_of(doc: &Plan) -> String {
    text(doc, false)
}
