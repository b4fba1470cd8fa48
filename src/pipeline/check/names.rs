//! Names in a pipeline file: table names (`schema.table`, quoted or not), column names, and the
//! names deriver gives things (pipelines, aliases, fields, indexes).

use crate::source::TableName;

/// Parses `schema.table`, `table`, `"Quoted Name"`; unquoted names fold to lower case.
pub fn parse_table_name(text: &str) -> Result<TableName, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut ident = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        ident.push('"');
                    }
                    Some('"') => break,
                    Some(c) => ident.push(c),
                    None => return Err(format!("unclosed quote in table name `{text}`")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(format!("`{text}` is not a table name (quote names with spaces or symbols: \"My Table\")"));
                }
                ident.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if ident.is_empty() {
            return Err(format!("`{text}` is not a table name"));
        }
        parts.push(ident);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(format!("`{text}` is not a table name")),
        }
    }
    match parts.len() {
        1 => Ok(TableName::new("public", parts.remove(0))),
        2 => {
            let name = parts.remove(1);
            Ok(TableName::new(parts.remove(0), name))
        }
        _ => Err(format!("`{text}` is not a table name (use schema.table)")),
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `film_id` → `film_id`; `"Order ID"` → `Order ID`; unquoted names fold to lower case.
pub(super) fn unquote_column(col: &str) -> String {
    let col = col.trim();
    if col.len() >= 2 && col.starts_with('"') && col.ends_with('"') {
        col[1..col.len() - 1].replace("\"\"", "\"")
    } else {
        col.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(parse_table_name("film").unwrap(), TableName::new("public", "film"));
        assert_eq!(parse_table_name("Sales.Orders").unwrap(), TableName::new("sales", "orders"));
        assert_eq!(parse_table_name("\"Order Details\"").unwrap(), TableName::new("public", "Order Details"));
        assert_eq!(parse_table_name("s.\"x; drop table y\"").unwrap(), TableName::new("s", "x; drop table y"));
        assert!(parse_table_name("a.b.c").is_err());
        assert!(parse_table_name("a b").is_err());
        assert!(parse_table_name("\"open").is_err());
    }
}
