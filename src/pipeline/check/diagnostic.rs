//! A problem in a pipeline file, with its `file:line:col` and the offending line, and the way back
//! from a position in generated SQL to the YAML fragment it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::pipeline::yaml::Pos;
use crate::pipeline::Pipeline;

/// One problem in a pipeline file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    /// The offending source line, for a caret snippet.
    pub line_text: Option<String>,
    pub warning: bool,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.warning { "warning" } else { "error" };
        write!(f, "{}:{}:{}: {level}: {}", self.file.display(), self.pos.line, self.pos.col, self.message)?;
        if let Some(line) = &self.line_text {
            let pad = " ".repeat(self.pos.col.saturating_sub(1) as usize);
            write!(f, "\n    | {line}\n    | {pad}^")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// A problem found outside the checker (environment checks), at a position of `file`.
    pub fn at(file: &Path, pos: Pos, message: impl Into<String>, warning: bool) -> Diagnostic {
        let line_text =
            std::fs::read_to_string(file).ok().and_then(|t| t.lines().nth(pos.line.saturating_sub(1) as usize).map(str::to_string)).filter(|_| pos.line > 0);
        Diagnostic { file: file.to_path_buf(), pos, message: message.into(), line_text, warning }
    }
}

/// Maps a Postgres error position (1-based, in characters, in `sql`) back to the YAML fragment it
/// falls in.
pub fn locate_sql_error(p: &Pipeline, sql: &str, position: usize) -> Option<Pos> {
    let chars: Vec<char> = sql.chars().collect();
    let at = position.checked_sub(1)?;
    for (fragment, pos) in &p.fragments {
        let f: Vec<char> = fragment.chars().collect();
        if f.is_empty() || f.len() > chars.len() {
            continue;
        }
        for start in 0..=chars.len() - f.len() {
            if chars[start..start + f.len()] == f[..] && (start..start + f.len()).contains(&at) {
                let offset = (at - start) as u64;
                // Single-line fragments: point at the exact character.
                let col = if fragment.contains('\n') { pos.col } else { pos.col + offset };
                return Some(Pos { line: pos.line, col });
            }
        }
    }
    None
}
