//! `on` conditions: column equalities joined by AND, parsed and resolved against the relations a
//! join may reach.

use super::checker::Checker;
use crate::pipeline::yaml::Node;
use crate::pipeline::Equality;

/// `rel.col`, as (relation, column).
pub type ColumnRef = (String, String);

/// Splits an `on` condition into `rel.col = rel.col` terms joined by AND.
pub fn parse_on(text: &str) -> Result<Vec<(ColumnRef, ColumnRef)>, String> {
    #[derive(Debug, PartialEq)]
    enum Tok {
        Ident(String),
        Dot,
        Eq,
        And,
        Open,
        Close,
    }
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '.' {
            toks.push(Tok::Dot);
            i += 1;
        } else if ch == '=' {
            toks.push(Tok::Eq);
            i += 1;
        } else if ch == '(' {
            toks.push(Tok::Open);
            i += 1;
        } else if ch == ')' {
            toks.push(Tok::Close);
            i += 1;
        } else if ch == '"' {
            let mut id = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        id.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        id.push(c);
                        i += 1;
                    }
                    None => return Err("unclosed quote".into()),
                }
            }
            toks.push(Tok::Ident(id));
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.eq_ignore_ascii_case("and") {
                toks.push(Tok::And);
            } else {
                toks.push(Tok::Ident(word.to_lowercase()));
            }
        } else {
            return Err(format!("unexpected `{ch}`: `on` must be column equalities (`a.x = b.y AND …`)"));
        }
    }
    let toks: Vec<Tok> = toks.into_iter().filter(|t| *t != Tok::Open && *t != Tok::Close).collect();
    let mut out = Vec::new();
    let mut pos = 0;
    let col = |pos: &mut usize| -> Result<(String, String), String> {
        match (toks.get(*pos), toks.get(*pos + 1), toks.get(*pos + 2)) {
            (Some(Tok::Ident(r)), Some(Tok::Dot), Some(Tok::Ident(c))) => {
                *pos += 3;
                Ok((r.clone(), c.clone()))
            }
            _ => Err("`on` must be column equalities of the form `relation.column = relation.column`, joined by AND".into()),
        }
    };
    loop {
        let a = col(&mut pos)?;
        if toks.get(pos) != Some(&Tok::Eq) {
            return Err("`on` must be column equalities of the form `relation.column = relation.column`, joined by AND".into());
        }
        pos += 1;
        let b = col(&mut pos)?;
        out.push((a, b));
        match toks.get(pos) {
            None => break,
            Some(Tok::And) => pos += 1,
            Some(_) => return Err("`on` must be column equalities joined by AND".into()),
        }
    }
    Ok(out)
}

/// Resolves an `on` against `this` relation's names and its possible parents `(name, canonical)`.
pub(super) fn resolve_on(c: &mut Checker, node: &Node, text: &str, this_names: &[String], parents: &[(String, String)], what: &str) -> Option<Vec<Equality>> {
    let terms = match parse_on(text) {
        Ok(t) => t,
        Err(e) => {
            c.err(node.pos, format!("{what}: {e}"));
            return None;
        }
    };
    let mut out = Vec::new();
    for (a, b) in terms {
        let side = |r: &(String, String)| {
            if this_names.contains(&r.0) {
                Some(None)
            } else {
                parents.iter().find(|(n, _)| *n == r.0).map(|(_, canon)| Some(canon.clone()))
            }
        };
        match (side(&a), side(&b)) {
            (Some(None), Some(Some(p))) => out.push(Equality { this: a.1, parent: p, parent_column: b.1 }),
            (Some(Some(p)), Some(None)) => out.push(Equality { this: b.1, parent: p, parent_column: a.1 }),
            _ => {
                let known: Vec<&str> = this_names.iter().map(String::as_str).chain(parents.iter().map(|(n, _)| n.as_str())).collect();
                c.err(
                    node.pos,
                    format!(
                        "{what}: `{}.{} = {}.{}` must join {} to one of {} (known names: {})",
                        a.0,
                        a.1,
                        b.0,
                        b.1,
                        this_names[0],
                        parents.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                        known.join(", ")
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}
