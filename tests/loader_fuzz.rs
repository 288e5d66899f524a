//! Arbitrary bytes and arbitrary YAML thrown at the spec loader: it may refuse, never panic,
//! and every refusal has a position inside the file.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "version",
    "name",
    "github",
    "repo",
    "org",
    "api_url",
    "auth",
    "token_env",
    "app",
    "app_id",
    "installation_id",
    "private_key_file",
    "hosts",
    "local",
    "docker",
    "gpus",
    "defaults",
    "pools",
    "gpu",
    "cpu",
    "host",
    "count",
    "labels",
    "no_default_labels",
    "ephemeral",
    "runner_group",
    "image",
    "pull",
    "volumes",
    "source",
    "target",
    "read_only",
    "env",
    "network",
    "cpus",
    "memory",
    "docker_socket",
    "RUNNER_NAME",
    "x",
];

fn check(text: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(diagnostics) = fleet::spec::parse_str(text, dir) {
        assert!(!diagnostics.is_empty());
        // YAML breaks lines on \n, \r and \r\n; a position may sit just past the last one.
        let lines = text.matches(['\n', '\r']).count() + 2;
        for d in diagnostics {
            assert!(
                d.pos.line >= 1 && d.pos.line <= lines,
                "{d:?} outside the text"
            );
            // Rendering never panics either, whatever the position.
            let _ = d.render("fleet.yaml", text);
        }
    }
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(KEYS).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        Just(Value::from("all")),
        Just(Value::from("GPU-1234")),
        Just(Value::from("/abs/path")),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(KEYS).prop_map(String::from),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FRAGMENTS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "*b",
    "!!str ",
    "!!int ",
    "'",
    "\"",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "#",
    "---\n",
    "...\n",
    "|\n",
    ">-\n",
    "? ",
    "~",
    "%YAML 1.2\n",
    "0x1F",
    "-1",
    "1.5e3",
    "\\u00e9",
    "é",
    "\u{feff}",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(FRAGMENTS).prop_map(String::from),
            prop::sample::select(KEYS).prop_map(String::from),
        ],
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, timeout: 5_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml_fragments_never_panic(text in yamlish()) {
        check(&text);
    }

    #[test]
    fn arbitrary_documents_never_panic(doc in tree()) {
        // JSON is YAML; also try the same tree as a spec-shaped document.
        check(&doc.to_string());
        let mut spec = serde_json::json!({
            "version": 1, "name": "demo", "github": { "repo": "a/b" },
            "pools": { "cpu": { "count": 1, "image": "x" } }
        });
        spec["pools"]["cpu"]["labels"] = doc.clone();
        spec["defaults"] = doc;
        check(&spec.to_string());
    }

    #[test]
    fn mutated_example_never_panics(
        drop_line in 0usize..200,
        dup_line in 0usize..200,
        cut in 0usize..5000,
        insert in prop::sample::select(FRAGMENTS),
    ) {
        let example = include_str!("../fleet.example.yaml");
        let mut lines: Vec<&str> = example.lines().collect();
        if drop_line < lines.len() { lines.remove(drop_line); }
        if dup_line < lines.len() { let l = lines[dup_line]; lines.insert(dup_line, l); }
        let mut text = lines.join("\n");
        let at = text.char_indices().map(|(i, _)| i).nth(cut % text.chars().count().max(1)).unwrap_or(0);
        text.insert_str(at, insert);
        check(&text);
    }
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    let err = fleet::spec::parse_str(&text, Path::new(".")).expect_err("refused");
    assert!(
        err.iter()
            .any(|d| d.message.contains("aliases expand to more than")),
        "{err:?}"
    );
}
