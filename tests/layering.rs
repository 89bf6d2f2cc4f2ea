//! The layer map holds (README, "Layers"): only the adapters (`src/aws/`) and the composition
//! roots (`src/bin/`, `lambdas/`) name `crate::aws`; the domain (`src/domain/`) depends on
//! nothing above it; modules do not import each other in a circle; no source file is longer
//! than 700 lines. Reads the source tree; needs no service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

/// Modules that are namespaces: their children are the graph's nodes.
const NAMESPACES: [&str; 4] = ["aws", "control", "domain", "ports"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/control/commands/flip.rs` → `["control", "commands", "flip"]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The domain modules lib.rs re-exports at the crate root (`crate::seq` is `domain::seq`).
fn domain_reexports() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let line = lib
        .lines()
        .find(|l| l.starts_with("pub use domain::{"))
        .expect("lib.rs re-exports the domain modules");
    line["pub use domain::{".len()..]
        .trim_end_matches("};")
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect()
}

/// The graph node a module path belongs to: a top-level module, or a namespace's child.
fn node(parts: &[&str]) -> Option<String> {
    if let Some(first) = parts.first() {
        if domain_reexports().iter().any(|m| m == first) {
            return Some(format!("domain::{first}"));
        }
    }
    match parts {
        [] => None,
        [ns, child, ..] if NAMESPACES.contains(ns) => Some(format!("{ns}::{child}")),
        [top, ..] => Some((*top).to_owned()),
    }
}

/// The code of a file without comment lines (docs may name any module).
fn code(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` path in `code`, as `[a, b]` (or `[a]`).
fn crate_paths(code: &str) -> Vec<Vec<&str>> {
    code.match_indices("crate::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .split("::")
                .take(2)
                .map(|p| {
                    let end = p
                        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(p.len());
                    &p[..end]
                })
                .take_while(|p| !p.is_empty())
                .collect()
        })
        .collect()
}

fn library_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.retain(|f| !f.starts_with(root().join("src/bin")));
    files.sort();
    files
}

#[test]
fn only_adapters_and_composition_roots_name_the_aws_module() {
    let mut offenders = Vec::new();
    for file in library_files() {
        let parts = module_path(&file);
        if parts.first().is_some_and(|p| p == "aws") || parts.is_empty() {
            continue; // the adapters, and lib.rs (which declares them)
        }
        for (n, line) in code(&file).lines().enumerate() {
            if line.contains("crate::aws") || line.contains("super::aws") {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these core modules reach into the AWS adapters; take a port (src/ports/) instead and \
         let a composition root (src/bin/, lambdas/) pass the adapter in:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn modules_do_not_import_each_other_in_a_circle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in library_files() {
        let parts = module_path(&file);
        // Unit tests may reach anywhere; lib.rs only declares.
        if parts.is_empty() || parts.iter().any(|p| p == "tests") {
            continue;
        }
        let me = node(&parts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let code = code(&file);
        for path in crate_paths(&code) {
            if let Some(to) = node(&path) {
                if to != me {
                    edges.entry(me.clone()).or_default().insert(to);
                }
            }
        }
    }
    assert!(edges.len() > 20, "the graph was not read: {edges:?}");
    // The domain depends on nothing but itself.
    let outward: Vec<String> = edges
        .iter()
        .filter(|(from, _)| from.starts_with("domain::"))
        .flat_map(|(from, to)| {
            to.iter()
                .filter(|t| !t.starts_with("domain::"))
                .map(move |t| format!("{from} -> {t}"))
        })
        .collect();
    assert!(
        outward.is_empty(),
        "the domain (src/domain/) must not depend on the layers above it:\n{}",
        outward.join("\n")
    );
    // A cycle exists iff a node reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    circles.push(format!("{} -> {start}", trail.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    circles.truncate(10);
    assert!(
        circles.is_empty(),
        "modules import each other in a circle (move the shared type down a layer, or put \
         the trait in src/ports/):\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_700_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for dir in ["lambdas", "tests", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "target"))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these files by what they hold (see src/verify/ or src/runner/):\n{}",
        long.join("\n")
    );
}
