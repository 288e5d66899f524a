//! The crate's top-level modules form no cycle (docs/architecture.md, "Modules and arrows").
//!
//! The graph is read from the sources: every `crate::<module>` path in a file of `src/<module>`
//! (in `use` declarations and inline paths alike) is an arrow from that module to the other.
//! Test code is left out (`tests.rs`, `*_tests.rs` and the items under `#[cfg(test)]`): tests
//! may reach across.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(relative: &str) -> bool {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// The code without `//` comments and without the items under `#[cfg(test)]` (a `mod x;`, or
/// an item up to its balanced closing brace).
fn production_code(text: &str) -> String {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut kept = String::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        rest = &rest[at + "#[cfg(test)]".len()..];
        let end = match (rest.find(';'), rest.find('{')) {
            (Some(semi), Some(brace)) if semi < brace => semi + 1,
            (Some(semi), None) => semi + 1,
            (_, Some(brace)) => balanced_end(rest, brace),
            (None, None) => rest.len(),
        };
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

/// The index just past the brace that closes the one at `open`.
fn balanced_end(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (at, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + at + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segments after each `crate::` (each member of a `crate::{a, b::c}` group).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(split_group(group));
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The first segment of each top-level member of `a, b::{c, d}, e }...`.
fn split_group(group: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            current.push(c);
        }
    }
    members.push(current);
    members
        .iter()
        .map(|m| {
            m.trim()
                .chars()
                .take_while(|&c| is_ident(c))
                .collect::<String>()
        })
        .filter(|m| !m.is_empty() && m != "self")
        .collect()
}

/// module -> (module it uses -> the files that use it).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let relative = f.strip_prefix(src).ok()?;
            let first = relative.components().next()?.as_os_str().to_str()?;
            Some(first.trim_end_matches(".rs").to_string())
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let relative = file
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .to_string();
        let module = relative
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        if !modules.contains(&module) || is_test_file(&relative) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{relative}: {e}"));
        let arrows = graph.entry(module.clone()).or_default();
        for used in crate_paths(&production_code(&text)) {
            if used != module && modules.contains(&used) {
                arrows.entry(used).or_default().push(relative.clone());
            }
        }
    }
    graph
}

/// One cycle of the graph, if it has any: the modules in order, the first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        module: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for used in graph.get(module).into_iter().flat_map(|a| a.keys()) {
            if let Some(cycle) = visit(graph, used, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(graph, module, &mut Vec::new(), &mut done))
}

fn describe(graph: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|pair| {
            let files = &graph[&pair[0]][&pair[1]];
            format!("  {} -> {} ({})", pair[0], pair[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 10,
        "too few modules read from {}",
        src.display()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the module graph has a cycle: {}\n{}",
            cycle.join(" -> "),
            describe(&graph, &cycle)
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let dir = std::env::temp_dir().join(format!("fleet-module-graph-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;");
    write("d.rs", "#[cfg(test)]\nmod tests;\nuse crate::a::Z;");
    write(
        "a/mod.rs",
        "use crate::{b::{self, X}, c};\n#[cfg(test)]\nuse crate::c::T;",
    );
    write("b.rs", "fn f() { crate::c::g() } // crate::a::h()");
    write("c.rs", "use crate::a::Y;");
    let graph = module_graph(&dir);
    let cycle = find_cycle(&graph);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert_eq!(graph["a"].keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(graph["b"].keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(graph["d"].keys().collect::<Vec<_>>(), ["a"]);
    let cycle = cycle.expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"c".to_string()), "{cycle:?}");
}
