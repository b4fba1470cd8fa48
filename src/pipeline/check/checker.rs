//! The state of one file's check (`Checker`: the problems found, the SQL fragments seen) and its
//! typed reads of YAML nodes, each reporting a problem at the node's position when the node is
//! not what it should be.

use std::path::Path;

use super::Diagnostic;
use crate::pipeline::yaml::{Key, Node, Pos, Value};

pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) errors: Vec<Diagnostic>,
    /// SQL fragments seen, with their positions.
    pub(super) fragments: Vec<(String, Pos)>,
}

impl<'a> Checker<'a> {
    pub(super) fn err(&mut self, pos: Pos, message: impl Into<String>) {
        let line_text = self.text.lines().nth(pos.line.saturating_sub(1) as usize).map(str::to_string);
        self.errors.push(Diagnostic { file: self.file.to_path_buf(), pos, message: message.into(), line_text, warning: false });
    }

    /// Reads a mapping, reporting keys outside `allowed`.
    pub(super) fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => {
                for (k, _) in entries {
                    if !allowed.contains(&k.name.as_str()) {
                        self.err(k.pos, format!("unknown key `{}` in {what} (expected one of: {})", k.name, allowed.join(", ")));
                    }
                }
                Some(entries)
            }
            other => {
                self.err(node.pos, format!("{what} must be a mapping, found {}", other.type_name()));
                None
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.err(node.pos, format!("{what} must not be empty"));
                None
            }
            // SQL fragments like `1` or `true` are fine as expressions.
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err(node.pos, format!("{what} must be a string, found {}", other.type_name()));
                None
            }
        }
    }

    /// A string that is SQL: remembered with its position for error mapping.
    pub(super) fn sql(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        // Point inside a quoted scalar at its first character.
        let line = self.text.lines().nth(node.pos.line.saturating_sub(1) as usize).unwrap_or("");
        let quoted = matches!(line.chars().nth(node.pos.col.saturating_sub(1) as usize), Some('"') | Some('\''));
        let pos = Pos { line: node.pos.line, col: node.pos.col + u64::from(quoted) };
        self.fragments.push((s.clone(), pos));
        Some(s)
    }

    pub(super) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            ref other => {
                self.err(node.pos, format!("{what} must be true or false, found {}", other.type_name()));
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    if let Some(s) = self.string(item, what) {
                        out.push((s, item.pos));
                    }
                }
                Some(out)
            }
            other => {
                self.err(node.pos, format!("{what} must be a list, found {}", other.type_name()));
                None
            }
        }
    }
}

pub(super) fn get<'n>(entries: &'n [(Key, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}
