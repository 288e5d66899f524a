//! Arbitrary bytes and arbitrary YAML thrown at the spec loader: it may refuse, never panic,
//! and every refusal has a position inside the file. Deep, wide and long documents are refused
//! or read without overflowing the stack, and the schema never accepts what the model refuses.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

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
    "secrets",
    "security",
    "no_new_privileges",
    "pids_limit",
    "net_raw",
    "autoscale",
    "min_idle",
    "max",
    "scale_set",
    "tls",
    "ca",
    "cert",
    "key",
    "insecure",
    "RUNNER_NAME",
    "NVIDIA_VISIBLE_DEVICES",
    "x",
];

/// Parses `text`; on refusal, checks every diagnostic and returns them.
fn check(text: &str) -> Vec<fleet::spec::Diagnostic> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match fleet::spec::parse_str(text, dir) {
        Ok(spec) => {
            // A valid spec resolves, every pool on at least one host.
            for pool in spec.resolved_pools() {
                assert!(pool.hosts.first() == Some(&pool.host), "{pool:?}");
            }
            Vec::new()
        }
        Err(diagnostics) => {
            check_diagnostics(text, &diagnostics);
            diagnostics
        }
    }
}

fn check_diagnostics(text: &str, diagnostics: &[fleet::spec::Diagnostic]) {
    assert!(!diagnostics.is_empty());
    {
        // YAML breaks lines on \n, \r and \r\n; a position may sit just past the last one.
        let lines = text.matches(['\n', '\r']).count() + 2;
        for d in diagnostics {
            assert!(
                d.pos.line >= 1 && d.pos.line <= lines,
                "{d:?} outside the text"
            );
            assert!(!d.message.contains("internal error"), "{d:?} for\n{text}");
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

// --- Spec-shaped documents with edge values: the schema and the model agree on every one. ---

/// Integers of every width and sign, written as integers and as floats, and a few non-numbers.
fn edge_number() -> impl Strategy<Value = Value> + Clone {
    prop::sample::select(vec![
        json!(-1),
        json!(1.0),
        json!(2.0),
        json!(0.5),
        json!(1e3),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e20),
        json!(-1e20),
        json!("1"),
        json!(null),
    ])
}

/// Mostly one of `valid`, sometimes an edge.
fn number(valid: &'static [i64]) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(valid).prop_map(Value::from),
        1 => edge_number(),
    ]
    .boxed()
}

fn word(words: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::sample::select(words).prop_map(Value::from).boxed()
}

fn flag() -> BoxedStrategy<Value> {
    prop_oneof![8 => any::<bool>().prop_map(Value::from), 1 => Just(json!("yes"))].boxed()
}

/// A mapping whose fields are each present or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    fields
        .into_iter()
        .map(|(key, value)| prop::option::weighted(0.4, value).prop_map(move |v| (key, v)))
        .collect::<Vec<_>>()
        .prop_map(|entries| {
            Value::Object(
                entries
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect(),
            )
        })
        .boxed()
}

const HOSTS: &[&str] = &["local", "bare", "vm"];

fn host() -> BoxedStrategy<Value> {
    object(vec![
        (
            "docker",
            word(&[
                "unix:///var/run/docker.sock",
                "ssh://ci@vm.lan:2222",
                "tcp://127.0.0.1:2375",
                "http://localhost:2375",
                "tcp://tower.lan:2376",
                "tcp://[::1]:0",
            ]),
        ),
        ("insecure", flag()),
        (
            "tls",
            object(vec![
                ("ca", word(&["Cargo.toml"])),
                ("cert", word(&["Cargo.toml"])),
                ("key", word(&["/nonexistent/key.pem"])),
            ]),
        ),
        (
            "gpus",
            prop_oneof![
                word(&["auto", "none"]),
                Just(json!(["GPU-11111111-2222"])),
                Just(json!(["GPU-1", "GPU-2"])),
            ]
            .boxed(),
        ),
        ("gpu_mode", word(&["nvidia", "cdi", "env"])),
    ])
}

fn pool() -> BoxedStrategy<Value> {
    object(vec![
        (
            "host",
            prop_oneof![
                word(HOSTS),
                prop::collection::vec(word(HOSTS), 1..3).prop_map(Value::Array),
            ]
            .boxed(),
        ),
        ("count", number(&[0, 1, 2, 1000])),
        (
            "autoscale",
            object(vec![
                ("min_idle", number(&[0, 1, 3])),
                ("max", number(&[1, 2, 8])),
                ("scale_set", word(&["gpu", "GPU", "a.b_c"])),
            ]),
        ),
        ("image", word(&["runner:1"])),
        (
            "gpus",
            prop_oneof![number(&[0, 1, 2, 64]), word(&["all"])].boxed(),
        ),
        ("labels", Just(json!(["gpu", "fleet.x"])).boxed()),
        ("ephemeral", flag()),
        ("no_default_labels", flag()),
        ("memory", word(&["16g", "4m", "0", "99999999999999999999g"])),
        (
            "cpus",
            prop_oneof![number(&[1, 8]), Just(json!(2.5))].boxed(),
        ),
        (
            "env",
            Just(json!({"NVIDIA_VISIBLE_DEVICES": "all", "A": "1"})).boxed(),
        ),
        ("secrets", word(&["file", "env"])),
        (
            "security",
            object(vec![
                ("no_new_privileges", flag()),
                ("pids_limit", number(&[0, 1, 4096, 1_000_000])),
                ("net_raw", flag()),
            ]),
        ),
        ("runner_group", word(&["Default", "gpu"])),
    ])
}

fn github() -> BoxedStrategy<Value> {
    let auth = object(vec![
        ("token_env", word(&["GH_TOKEN", "ghp_abcdefghij0123456789"])),
        (
            "app",
            object(vec![
                ("app_id", number(&[1, 12345])),
                ("installation_id", number(&[1, 678])),
                ("private_key_file", word(&["/nonexistent/app.pem"])),
            ]),
        ),
    ]);
    (word(&["repo", "org"]), prop::option::of(auth))
        .prop_map(|(scope, auth)| {
            let mut github = match scope.as_str() {
                Some("repo") => json!({ "repo": "acme/demo" }),
                _ => json!({ "org": "acme" }),
            };
            if let Some(auth) = auth {
                github["auth"] = auth;
            }
            github
        })
        .boxed()
}

fn names(words: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(words).prop_map(String::from).boxed()
}

fn spec_document() -> impl Strategy<Value = Value> {
    (
        number(&[1]),
        github(),
        prop::option::of(prop::collection::btree_map(names(HOSTS), host(), 1..3)),
        prop::option::of(pool()),
        prop::collection::btree_map(names(&["a", "b", "gpu"]), pool(), 1..4),
    )
        .prop_map(|(version, github, hosts, defaults, pools)| {
            let mut spec =
                json!({ "version": version, "name": "demo", "github": github, "pools": pools });
            if let Some(hosts) = hosts {
                spec["hosts"] = json!(hosts);
            }
            if let Some(defaults) = defaults {
                spec["defaults"] = defaults;
            }
            spec
        })
}

/// The schema accepts it, so the model does: what `parse_str` relies on.
fn schema_and_model_agree(text: &str) -> Result<bool, TestCaseError> {
    let doc = fleet::spec::yaml::parse(text);
    let Some(value) = doc.value else {
        return Ok(false);
    };
    if !fleet::spec::schema::check(&value, &doc.positions).is_empty() {
        return Ok(false);
    }
    let model: Result<fleet::spec::Spec, _> = serde_json::from_value(value);
    prop_assert!(
        model.is_ok(),
        "the schema accepted, the model refused: {:?}\n{}",
        model.err(),
        text
    );
    Ok(true)
}

// --- Deep, wide and long documents. ---

/// `depth` collections of one kind inside each other, as the whole document.
fn nested(kind: usize, depth: usize) -> String {
    match kind {
        0 => format!("{}x\n", "- ".repeat(depth)),
        1 => format!("{}x{}\n", "[".repeat(depth), "]".repeat(depth)),
        2 => format!("{}x{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
        3 => (0..depth)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect(),
        4 => format!("{}x{}\n", "[{a: ".repeat(depth / 2), "}]".repeat(depth / 2)),
        _ => (0..depth)
            .map(|i| format!("{}- a:\n", "  ".repeat(2 * i)))
            .collect(),
    }
}

/// Collections `nested(kind, depth)` opens.
fn levels(kind: usize, depth: usize) -> usize {
    match kind {
        4 => 2 * (depth / 2),
        5 => 2 * depth,
        _ => depth,
    }
}

const DEPTH_ERROR: &str = "levels of lists and mappings inside each other";

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, timeout: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn the_schema_never_accepts_what_the_model_refuses(doc in spec_document()) {
        let text = serde_json::to_string_pretty(&doc).expect("json");
        schema_and_model_agree(&text)?;
        check(&text);
    }

    #[test]
    fn nesting_of_every_kind_is_read_or_refused_for_depth(kind in 0usize..6, depth in 0usize..400) {
        let text = nested(kind, depth);
        let diagnostics = check(&text);
        let too_deep = diagnostics.iter().any(|d| d.message.contains(DEPTH_ERROR));
        let levels = levels(kind, depth);
        prop_assert_eq!(too_deep, levels > fleet::spec::yaml::MAX_DEPTH, "{} levels", levels);
    }

    #[test]
    fn an_alias_of_any_depth_at_any_depth(anchored in 0usize..80, around in 0usize..80) {
        let text = format!(
            "a: &a {}x{}\nb: {}*a{}\n",
            "[".repeat(anchored),
            "]".repeat(anchored),
            "[".repeat(around),
            "]".repeat(around)
        );
        let diagnostics = check(&text);
        let too_deep = diagnostics.iter().any(|d| d.message.contains(DEPTH_ERROR));
        // The document mapping is one level.
        prop_assert_eq!(too_deep, 1 + anchored.max(around + anchored) > fleet::spec::yaml::MAX_DEPTH);
    }
}

#[test]
fn forty_kib_and_one_mib_of_nesting_of_every_kind() {
    for kind in 0..6 {
        for bytes in [40 << 10, 1 << 20] {
            // Enough depth to fill about `bytes`.
            let per_level = nested(kind, 2).len() / 2 + 1;
            let depth = (bytes / per_level).min(if kind == 3 || kind == 5 {
                1400
            } else {
                usize::MAX
            });
            let text = nested(kind, depth);
            let text = &text[..text.len().min(fleet::spec::MAX_SPEC_BYTES as usize)];
            let diagnostics = check(text);
            assert!(
                diagnostics.iter().any(|d| d.message.contains(DEPTH_ERROR)),
                "kind {kind}, {} bytes: {:?}",
                text.len(),
                diagnostics.first()
            );
        }
    }
}

#[test]
fn a_text_over_the_limit_is_refused_unread() {
    let text = format!("pools: {}x{}", "[".repeat(600_000), "]".repeat(600_000));
    let diagnostics = check(&text);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(
        diagnostics[0]
            .message
            .contains("at most 1048576 bytes (1 MiB), found 1200008 bytes"),
        "{diagnostics:?}"
    );
}

#[test]
fn a_long_scalar_is_refused_and_quoted_in_part() {
    let name = "a".repeat(1_000_000);
    let text = format!("version: 1\nname: {name}\ngithub: {{ repo: a/b }}\npools: {{}}\n");
    let diagnostics = check(&text);
    let on_name: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.pointer == "/name")
        .collect();
    assert_eq!(on_name.len(), 1, "{diagnostics:?}");
    assert!(
        on_name[0].message.len() < 300,
        "{}",
        on_name[0].message.len()
    );
    let rendered = on_name[0].render("fleet.yaml", &text);
    assert!(rendered.len() < 1000, "{} bytes rendered", rendered.len());
}

#[test]
fn long_keys_are_named_in_part() {
    // Plain keys stop at 1024 characters in YAML; an explicit key (`? `) has no such limit.
    let key = "k".repeat(500_000);
    let text = format!(
        "version: 1\nname: demo\ngithub: {{ repo: a/b }}\n? {key}\n: 1\npools:\n  ? {key}\n  : {{ count: 1, image: x }}\n"
    );
    let diagnostics = check(&text);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:?}");
    for d in &diagnostics {
        assert!(
            d.message.len() < 300,
            "{} bytes of message",
            d.message.len()
        );
        let rendered = d.render("fleet.yaml", &text);
        assert!(rendered.len() < 1500, "{} bytes rendered", rendered.len());
    }
}

#[test]
fn many_keys_are_all_reported_and_rendered_in_part() {
    let mut text = String::from("version: 1\nname: demo\ngithub: { repo: a/b }\npools: {}\n");
    for i in 0..50_000 {
        text.push_str(&format!("k{i}: 1\n"));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let diagnostics = fleet::spec::parse_str(&text, dir).expect_err("refused");
    assert_eq!(diagnostics.len(), 50_000);
    let error = fleet::spec::SpecError::Invalid {
        path: "fleet.yaml".into(),
        text: text.clone(),
        diagnostics,
    };
    let rendered = error.render();
    assert!(
        rendered.contains("49900 more problem(s) not shown"),
        "{}",
        &rendered[rendered.len() - 300..]
    );
    assert!(rendered.contains("50000 problem(s) found"));
}

#[test]
fn many_pools_many_labels_and_many_volumes_are_checked() {
    let mut text = String::from("version: 1\nname: demo\ngithub: { repo: a/b }\npools:\n");
    for i in 0..5_000 {
        text.push_str(&format!("  p{i}: {{ count: 1, image: x }}\n"));
    }
    let labels: Vec<String> = (0..20_000).map(|i| format!("l{i}")).collect();
    text.push_str(&format!(
        "  big: {{ count: 1, image: x, labels: [{}] }}\n",
        labels.join(", ")
    ));
    let diagnostics = check(&text);
    assert!(
        diagnostics
            .iter()
            .any(|d| d.message.contains("expected at most 100 labels per runner")),
        "{diagnostics:?}"
    );
}

#[test]
fn wide_alias_bombs_are_refused_not_expanded() {
    let mut text = format!("a: &a [{}]\n", vec!["x"; 1000].join(", "));
    text.push_str(&format!("b: [{}]\n", vec!["*a"; 20].join(", ")));
    let diagnostics = check(&text);
    assert!(
        diagnostics
            .iter()
            .any(|d| d.message.contains("aliases expand to more than")),
        "{diagnostics:?}"
    );
    // Deep anchors aliased again and again.
    let mut text = String::from("a0: &a0 [x]\n");
    for i in 1..200 {
        text.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
    }
    let diagnostics = check(&text);
    assert!(
        diagnostics
            .iter()
            .any(|d| d.message.contains(DEPTH_ERROR) || d.message.contains("aliases expand")),
        "{diagnostics:?}"
    );
}

#[test]
fn the_spec_generator_reaches_the_model_often() {
    // The property above means something only if the schema accepts many generated specs.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = spec_document();
    let accepted = (0..500)
        .filter(|_| {
            let doc = strategy
                .new_tree(&mut runner)
                .expect("a document")
                .current();
            let text = serde_json::to_string(&doc).expect("json");
            schema_and_model_agree(&text).expect("schema and model agree")
        })
        .count();
    assert!(
        accepted >= 50,
        "only {accepted} of 500 generated specs passed the schema"
    );
}

#[test]
fn the_label_limit_counts_fleets_own_label() {
    let spec = |n: usize| {
        let labels: Vec<String> = (0..n).map(|i| format!("l{i}")).collect();
        format!(
            "version: 1\nname: demo\ngithub: {{ repo: a/b }}\npools:\n  p: {{ count: 1, image: x, no_default_labels: true, labels: [{}] }}\n",
            labels.join(", ")
        )
    };
    let too_many = |n: usize| {
        check(&spec(n))
            .iter()
            .any(|d| d.message.contains("expected at most 100 labels per runner"))
    };
    // 99 of the spec's own and fleet's ownership label make 100, GitHub's limit; 100 make 101.
    assert!(!too_many(99));
    assert!(too_many(100));
}
