//! Pipelines: the YAML files data teams edit, checked into [`Pipeline`]s and compiled into SQL.

pub mod check;
pub mod model;
pub mod relevance;
pub mod sql;
pub mod yaml;

use std::path::Path;

pub use check::Diagnostic;
pub use model::*;

/// Reads and checks every `*.yaml` / `*.yml` file of `dir`. `Err` carries every problem of every
/// file, so a user fixes them in one pass.
pub fn load_dir(dir: &Path) -> Result<Vec<Pipeline>, Vec<Diagnostic>> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml"))).collect()
        }
        Err(e) => {
            return Err(vec![Diagnostic {
                file: dir.to_path_buf(),
                pos: yaml::Pos { line: 0, col: 0 },
                message: format!("cannot read the pipelines directory: {e}"),
                line_text: None,
                warning: false,
            }])
        }
    };
    files.sort();
    let mut pipelines = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match check::check(&file, &text) {
                Ok(p) => pipelines.push(p),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(Diagnostic {
                file: file.clone(),
                pos: yaml::Pos { line: 0, col: 0 },
                message: format!("cannot read the file: {e}"),
                line_text: None,
                warning: false,
            }),
        }
    }
    // Search index names are global.
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for p in &pipelines {
        for t in &p.search {
            if let Some(other) = seen.insert(t.index.clone(), p.name.clone()) {
                errors.push(Diagnostic {
                    file: p.file.clone(),
                    pos: yaml::Pos { line: 1, col: 1 },
                    message: format!("search index `{}` is also written by pipeline `{other}`", t.index),
                    line_text: None,
                    warning: false,
                });
            }
        }
    }
    if pipelines.is_empty() && errors.is_empty() {
        errors.push(Diagnostic {
            file: dir.to_path_buf(),
            pos: yaml::Pos { line: 0, col: 0 },
            message: "no pipeline files (*.yaml) found".into(),
            line_text: None,
            warning: false,
        });
    }
    if errors.is_empty() {
        Ok(pipelines)
    } else {
        Err(errors)
    }
}
