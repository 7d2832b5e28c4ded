//! `cargo xtask layering`: the product crates' modules depend on each other one way, and no
//! source file grows past what one reader holds.
//!
//! For each product crate, a module's dependencies are the other top-level modules it
//! names (`crate::name`, `crate::{a, b}`, or an item the crate root re-exports from one,
//! `crate::Item`); a submodule counts as its top-level module. Any cycle fails, as does a
//! file with more than [`MAX_LINES`] lines before its `#[cfg(test)]` module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};

/// The crates whose layering is checked.
const CRATES: &[&str] = &["envelope", "rooms", "bus", "gateway", "publisher"];
/// The most lines a source file may have before its tests.
const MAX_LINES: usize = 900;

/// Fails on a module cycle or an over-long file in the product crates.
pub(crate) fn check() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for krate in CRATES {
        let src = Path::new("crates").join(krate).join("src");
        let mut files = Vec::new();
        collect(&src, &mut files)?;
        let root = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
        let exports = reexports(&root);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let rel = file.strip_prefix(&src).unwrap_or(file);
            let module = top_module(rel);
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body = before_tests(&text);
            let lines = body.lines().count();
            // Comments (doc links among them) name other modules without depending on them.
            let code: String = body
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            if lines > MAX_LINES {
                problems.push(format!(
                    "{}: {lines} lines before its tests (at most {MAX_LINES})",
                    file.display()
                ));
            }
            let Some(module) = module else { continue };
            let deps = graph.entry(module.clone()).or_default();
            for name in crate_paths(&code) {
                let target = exports.get(&name).cloned().unwrap_or(name);
                if target != module {
                    deps.insert(target);
                }
            }
        }
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for deps in graph.values_mut() {
            deps.retain(|d| modules.contains(d));
        }
        for cycle in cycles(&graph) {
            problems.push(format!(
                "crates/{krate}: modules depend on each other: {}",
                cycle.join(" -> ")
            ));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!("layering: {} problems", problems.len());
    }
    eprintln!("layering: no module cycle, no file over {MAX_LINES} lines before its tests");
    Ok(())
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// `cluster/mod.rs` → `cluster`, `sio.rs` → `sio`; the crate root and `main.rs` → none.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The text before the first `#[cfg(test)]` at the start of a line.
fn before_tests(text: &str) -> &str {
    text.find("\n#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The names that follow `crate::`, including each of a `crate::{a, b::c}` group.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Item name → module, from the root's `pub use module::{A, B};` lines.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = root;
    while let Some(i) = rest.find("pub use ") {
        rest = &rest[i + "pub use ".len()..];
        let end = rest.find(';').unwrap_or(rest.len());
        let stmt = &rest[..end];
        if let Some((module, items)) = stmt.split_once("::") {
            let items = items.trim().trim_start_matches('{').trim_end_matches('}');
            for item in items.split(',') {
                let item = item.trim();
                let item = item.rsplit("::").next().unwrap_or(item);
                if !item.is_empty() {
                    map.insert(item.to_owned(), module.trim().to_owned());
                }
            }
        }
    }
    map
}

/// Every strongly connected group of two or more modules, as a path through it.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Reachability by repeated search: the graphs are a few dozen modules.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in graph.keys() {
        if done.contains(m) {
            continue;
        }
        let from_m = reach(m);
        let group: Vec<String> = graph
            .keys()
            .filter(|o| {
                *o == m && from_m.contains(m) || from_m.contains(*o) && reach(o).contains(m)
            })
            .cloned()
            .collect();
        if group.len() > 1 {
            done.extend(group.iter().cloned());
            out.push(group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_paths_groups_and_cycles() {
        let names =
            crate_paths("use crate::a::X;\nuse crate::{b, c::Y};\nfn f() { crate::D::new() }");
        assert_eq!(names, ["D", "a", "b", "c"].map(String::from).into());
        let exports = reexports("pub use a::{D, E};\npub use b::F;");
        assert_eq!(exports.get("D").map(String::as_str), Some("a"));
        assert_eq!(exports.get("F").map(String::as_str), Some("b"));
        let graph: BTreeMap<String, BTreeSet<String>> =
            [("a", vec!["b"]), ("b", vec!["a"]), ("c", vec!["a"])]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
                .collect();
        assert_eq!(cycles(&graph), [["a", "b"].map(String::from).to_vec()]);
        assert_eq!(before_tests("x\n#[cfg(test)]\nmod tests {}"), "x");
    }
}
