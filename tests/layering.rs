//! The shape of the code, checked: top-level modules import one way only (no cycles; nothing
//! under `source/` or `sink/` reaches up to `http/` or `cli/`), and no file grows past 600 lines
//! before its tests — the files that are still larger may only shrink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top: a module may use the ones before it, never one after it.
const LAYERS: [&str; 13] = ["redact", "error", "health", "telemetry", "config", "source", "pipeline", "sink", "status", "runtime", "http", "audit", "cli"];

/// Files over the limit when the limit came, with their size then: they may not grow.
const STILL_LARGE: [(&str, usize); 0] = [];
const LIMIT: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
    (first != "lib" && first != "main").then_some(first)
}

/// Every top-level module a piece of Rust text names as `crate::<module>` (also inside
/// `use crate::{a, b::c}`).
fn named_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                found.push(name);
            }
        } else {
            found.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    found.retain(|n| !n.is_empty());
    found
}

#[test]
fn modules_import_one_way() {
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else { continue };
        let Some(&own) = rank.get(module.as_str()) else {
            wrong.push(format!("{}: top-level module `{module}` has no place in LAYERS", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in named_modules(&text) {
            match rank.get(used.as_str()) {
                Some(&r) if r > own => wrong.push(format!("{}: `{module}` uses `{used}`, which sits above it", file.display())),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (bottom to top: {}):\n{}", LAYERS.join(" < "), wrong.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    assert_eq!(named_modules("use crate::{config::Config, error::Result};\nlet x = crate::http::client::get();"), ["config", "error", "http"]);
}

#[test]
fn no_file_grows_past_the_limit() {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let allowed: BTreeMap<&str, usize> = STILL_LARGE.iter().copied().collect();
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")).count();
        let rel = file.strip_prefix(root()).unwrap().to_string_lossy().to_string();
        let limit = allowed.get(rel.as_str()).copied().unwrap_or(LIMIT);
        if lines > limit {
            wrong.push(format!("{rel}: {lines} lines before its tests (at most {limit})"));
        }
    }
    assert!(wrong.is_empty(), "files too long (split them by what they do):\n{}", wrong.join("\n"));
}
