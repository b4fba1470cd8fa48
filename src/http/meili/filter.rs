//! Meilisearch's filter syntax, translated into deriver's filter (`src/http/filter.rs`, JSON form).
//!
//! A filter is a string — `genre = horror AND (rating != R OR release_year 2000 TO 2010)` — or an
//! array: its items are ANDed, and an item that is itself an array is an OR of its strings
//! (`["genre = horror", ["rating = G", "rating = PG"]]`). Conditions: `=`, `!=`, `>`, `>=`, `<`,
//! `<=`, `a TO b` (inclusive), `IN [..]`, `NOT IN [..]`, `EXISTS`, `NOT EXISTS`, `IS NULL`,
//! `IS NOT NULL`, `IS EMPTY`, `IS NOT EMPTY`, `STARTS WITH`, `NOT STARTS WITH`; combined with
//! `NOT`, `AND`, `OR` and parentheses. Keywords are case-insensitive; attribute names and
//! values may be quoted with `'` or `"` (with `\` escapes).
//!
//! Where deriver's index cannot tell the difference, `IS NULL` and `IS EMPTY` both mean "has no
//! indexed value" (a null, an empty list and a missing attribute all index nothing).

use serde_json::{json, Value};

use super::error::{MeiliError, MeiliResult};
use crate::http::error::shorten;

/// Nesting deeper than this is refused (as deriver's own filters).
const MAX_DEPTH: usize = crate::http::filter::MAX_DEPTH;
/// Longest filter string accepted.
const MAX_CHARS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A word or a quoted string (quoted: never a keyword).
    Word {
        text: String,
        quoted: bool,
    },
    Op(&'static str),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Comma,
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    /// Character position (0-based) in the filter string.
    at: usize,
}

fn error(message: String) -> MeiliError {
    MeiliError::bad_request("invalid_search_filter", message)
}

/// `message` followed by Meilisearch's position line: `1:4 the filter`.
fn at_error(input: &str, at: usize, message: &str) -> MeiliError {
    error(format!("{message}\n{}:{} {}", 1, at + 1, shorten(input)))
}

fn lex(input: &str) -> MeiliResult<Vec<Spanned>> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Tok::Open,
            ')' => Tok::Close,
            '[' => Tok::OpenBracket,
            ']' => Tok::CloseBracket,
            ',' => Tok::Comma,
            '=' => Tok::Op("="),
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Tok::Op("!=")
            }
            '>' | '<' => {
                if chars.get(i + 1) == Some(&'=') {
                    i += 1;
                    Tok::Op(if c == '>' { ">=" } else { "<=" })
                } else {
                    Tok::Op(if c == '>' { ">" } else { "<" })
                }
            }
            '\'' | '"' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(at_error(input, at, &format!("Expression `{c}` is missing a closing quote."))),
                        Some('\\') if chars.get(j + 1).is_some() => {
                            text.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(ch) if *ch == c => break,
                        Some(ch) => {
                            text.push(*ch);
                            j += 1;
                        }
                    }
                }
                i = j;
                Tok::Word { text, quoted: true }
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"()[],=!<>'\"".contains(chars[i]) {
                    i += 1;
                }
                if i == start {
                    // A lone `!`.
                    return Err(at_error(input, at, "Was expecting a value, an operator or a parenthesis."));
                }
                out.push(Spanned { tok: Tok::Word { text: chars[start..i].iter().collect(), quoted: false }, at });
                continue;
            }
        };
        out.push(Spanned { tok, at });
        i += 1;
    }
    Ok(out)
}

struct Parser<'a> {
    input: &'a str,
    toks: Vec<Spanned>,
    pos: usize,
    depth: usize,
}

const EXPECTING_OP: &str = "Was expecting an operation `=`, `!=`, `>=`, `>`, `<=`, `<`, `IN`, `NOT IN`, `TO`, `EXISTS`, `NOT EXISTS`, `IS NULL`, `IS NOT NULL`, `IS EMPTY`, `IS NOT EMPTY`, `STARTS WITH`, `NOT STARTS WITH`";

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|s| &s.tok)
    }

    fn here(&self) -> usize {
        self.toks.get(self.pos).map_or(self.input.chars().count(), |s| s.at)
    }

    fn fail<T>(&self, message: &str) -> MeiliResult<T> {
        Err(at_error(self.input, self.here(), message))
    }

    /// The next token is the (unquoted, case-insensitive) keyword `kw`.
    fn is_kw(&self, offset: usize, kw: &str) -> bool {
        matches!(self.toks.get(self.pos + offset).map(|s| &s.tok), Some(Tok::Word { text, quoted: false }) if text.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(0, kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> MeiliResult<Value> {
        let mut parts = vec![self.and()?];
        while self.eat_kw("OR") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { json!({ "or": parts }) })
    }

    fn and(&mut self) -> MeiliResult<Value> {
        let mut parts = vec![self.not()?];
        while self.eat_kw("AND") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { json!({ "and": parts }) })
    }

    fn not(&mut self) -> MeiliResult<Value> {
        if self.eat_kw("NOT") {
            self.nest()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(json!({ "not": inner }));
        }
        self.primary()
    }

    fn nest(&mut self) -> MeiliResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(&format!("The filter exceeded the maximum depth limit ({MAX_DEPTH})."));
        }
        Ok(())
    }

    fn primary(&mut self) -> MeiliResult<Value> {
        match self.peek() {
            Some(Tok::Open) => {
                self.pos += 1;
                self.nest()?;
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::Close) {
                    return self.fail("Expression is missing the following closing delimiter: `)`.");
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Tok::Word { .. }) => self.condition(),
            None => self.fail("Was expecting a value but instead got nothing."),
            Some(_) => self.fail("Was expecting a value, a parenthesis or `NOT`."),
        }
    }

    fn word(&mut self) -> Option<(String, bool)> {
        match self.peek() {
            Some(Tok::Word { text, quoted }) => {
                let w = (text.clone(), *quoted);
                self.pos += 1;
                Some(w)
            }
            _ => None,
        }
    }

    fn value(&mut self) -> MeiliResult<Value> {
        match self.word() {
            Some((text, _)) => Ok(Value::String(text)),
            None => self.fail("Was expecting a value."),
        }
    }

    fn condition(&mut self) -> MeiliResult<Value> {
        let start = self.here();
        let (attr, quoted) = self.word().unwrap_or_default();
        if !quoted && attr.starts_with("_geo") {
            return Err(at_error(self.input, start, &format!("`{}` is not supported: deriver's indexes have no geographic attribute.", shorten(&attr))));
        }
        let cond = |op: &str, v: Value| json!({ "field": attr, op: v });
        if let Some(Tok::Op(op)) = self.peek().cloned() {
            self.pos += 1;
            let v = self.value()?;
            return Ok(match op {
                "=" => cond("eq", v),
                "!=" => json!({ "not": cond("eq", v) }),
                ">" => cond("gt", v),
                ">=" => cond("gte", v),
                "<" => cond("lt", v),
                _ => cond("lte", v),
            });
        }
        if self.eat_kw("IN") {
            return Ok(cond("in", Value::Array(self.list()?)));
        }
        if self.eat_kw("EXISTS") {
            return Ok(cond("exists", Value::Bool(true)));
        }
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            if !(self.eat_kw("NULL") || self.eat_kw("EMPTY")) {
                return self.fail("Was expecting `NULL` or `EMPTY` after `IS`.");
            }
            return Ok(cond("exists", Value::Bool(negated)));
        }
        if self.is_kw(0, "STARTS") && self.is_kw(1, "WITH") {
            self.pos += 2;
            return self.starts_with(&attr);
        }
        if self.is_kw(0, "NOT") {
            if self.is_kw(1, "IN") {
                self.pos += 2;
                return Ok(json!({ "not": cond("in", Value::Array(self.list()?)) }));
            }
            if self.is_kw(1, "EXISTS") {
                self.pos += 2;
                return Ok(cond("exists", Value::Bool(false)));
            }
            if self.is_kw(1, "STARTS") && self.is_kw(2, "WITH") {
                self.pos += 3;
                return Ok(json!({ "not": self.starts_with(&attr)? }));
            }
        }
        if self.is_kw(0, "CONTAINS") || (self.is_kw(0, "NOT") && self.is_kw(1, "CONTAINS")) {
            return self.fail("`CONTAINS` is not supported by deriver: use a word search (`q`) or `STARTS WITH`.");
        }
        // `attr low TO high`.
        if matches!(self.peek(), Some(Tok::Word { .. })) && self.is_kw(1, "TO") {
            let low = self.value()?;
            self.pos += 1;
            let high = self.value()?;
            return Ok(json!({ "field": attr, "gte": low, "lte": high }));
        }
        self.fail(&format!("{EXPECTING_OP} at `{}`.", shorten(&attr)))
    }

    /// `STARTS WITH prefix` on a keyword: the range [prefix, next prefix).
    fn starts_with(&mut self, attr: &str) -> MeiliResult<Value> {
        let Value::String(prefix) = self.value()? else { unreachable!("values are strings") };
        Ok(match prefix_upper_bound(&prefix) {
            Some(upper) => json!({ "field": attr, "gte": prefix, "lt": upper }),
            None => json!({ "field": attr, "gte": prefix }),
        })
    }

    fn list(&mut self) -> MeiliResult<Vec<Value>> {
        if self.peek() != Some(&Tok::OpenBracket) {
            return self.fail("Expected `[` after `IN` keyword.");
        }
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::CloseBracket) => {
                    self.pos += 1;
                    return Ok(values);
                }
                Some(Tok::Word { .. }) => {
                    values.push(self.value()?);
                    match self.peek() {
                        Some(Tok::Comma) => self.pos += 1,
                        Some(Tok::CloseBracket) => {}
                        None => return self.fail("Expected matching `]` after the list of field names given to `IN[`"),
                        _ => return self.fail("Expected only comma-separated field names inside `IN[..]` but instead found a non-value."),
                    }
                }
                _ => return self.fail("Expected matching `]` after the list of field names given to `IN[`"),
            }
        }
    }
}

/// The smallest string greater than every string starting with `prefix` (`None`: no bound).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Parses one filter string (an empty one: `None`, no filter).
pub fn parse_str(input: &str) -> MeiliResult<Option<Value>> {
    if input.chars().count() > MAX_CHARS {
        return Err(error(format!("The filter is longer than {MAX_CHARS} characters.")));
    }
    let toks = lex(input)?;
    if toks.is_empty() {
        return Ok(None);
    }
    let mut p = Parser { input, toks, pos: 0, depth: 0 };
    let v = p.or()?;
    if p.pos < p.toks.len() {
        return p.fail("Found unexpected characters at the end of the filter: `AND` or `OR` expected.");
    }
    Ok(Some(v))
}

/// The `filter` parameter (string, array of strings / arrays of strings, or null) as deriver's
/// filter; `None` when it filters nothing.
pub fn translate(filter: &Value) -> MeiliResult<Option<Value>> {
    match filter {
        Value::Null => Ok(None),
        Value::String(s) => parse_str(s),
        Value::Array(items) => {
            let mut and = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => and.extend(parse_str(s)?),
                    Value::Array(alts) => {
                        let mut or = Vec::new();
                        for alt in alts {
                            match alt {
                                Value::String(s) => or.extend(parse_str(s)?),
                                other => return Err(array_error(other)),
                            }
                        }
                        if !or.is_empty() {
                            and.push(json!({ "or": or }));
                        }
                    }
                    other => return Err(array_error(other)),
                }
            }
            Ok(match and.len() {
                0 => None,
                1 => and.pop(),
                _ => Some(json!({ "and": and })),
            })
        }
        other => Err(error(format!("Invalid value type: expected an array or a string, but found {}: `{}`", kind(other), shorten(&other.to_string())))),
    }
}

fn array_error(v: &Value) -> MeiliError {
    error(format!("Invalid value type: the filter's array items must be strings or arrays of strings, found `{}`.", shorten(&v.to_string())))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Object(_) => "an object",
        _ => "a value",
    }
}

/// Every attribute a translated filter names (to check them with Meilisearch's messages).
pub fn attributes(filter: &Value, out: &mut Vec<String>) {
    match filter {
        Value::Object(obj) => {
            if let Some(Value::String(f)) = obj.get("field") {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
            for (k, v) in obj {
                if k == "and" || k == "or" || k == "not" {
                    attributes(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| attributes(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        parse_str(s).unwrap_or_else(|e| panic!("{s}: {e}")).unwrap()
    }

    #[test]
    fn conditions() {
        assert_eq!(t("genre = horror"), json!({ "field": "genre", "eq": "horror" }));
        assert_eq!(t("genre=horror"), json!({ "field": "genre", "eq": "horror" }));
        assert_eq!(t("genre != 'sci fi'"), json!({ "not": { "field": "genre", "eq": "sci fi" } }));
        assert_eq!(t("rate > 2.5"), json!({ "field": "rate", "gt": "2.5" }));
        assert_eq!(t("rate >= 2.5"), json!({ "field": "rate", "gte": "2.5" }));
        assert_eq!(t("rate<3"), json!({ "field": "rate", "lt": "3" }));
        assert_eq!(t("rate <= 3"), json!({ "field": "rate", "lte": "3" }));
        assert_eq!(t("year 2000 TO 2010"), json!({ "field": "year", "gte": "2000", "lte": "2010" }));
        assert_eq!(t("rating IN [G, 'PG', \"NC-17\",]"), json!({ "field": "rating", "in": ["G", "PG", "NC-17"] }));
        assert_eq!(t("rating not in [G]"), json!({ "not": { "field": "rating", "in": ["G"] } }));
        assert_eq!(t("rating EXISTS"), json!({ "field": "rating", "exists": true }));
        assert_eq!(t("rating NOT EXISTS"), json!({ "field": "rating", "exists": false }));
        assert_eq!(t("rating IS NULL"), json!({ "field": "rating", "exists": false }));
        assert_eq!(t("rating IS NOT EMPTY"), json!({ "field": "rating", "exists": true }));
        assert_eq!(t("title STARTS WITH ab"), json!({ "field": "title", "gte": "ab", "lt": "ac" }));
        assert_eq!(t(r#""the genre" = "it's \"x\"""#), json!({ "field": "the genre", "eq": "it's \"x\"" }));
        // What instant-meilisearch sends for a refinement.
        assert_eq!(t(r#""rating"="PG""#), json!({ "field": "rating", "eq": "PG" }));
    }

    #[test]
    fn combinators_and_precedence() {
        assert_eq!(
            t("a = 1 OR b = 2 AND c = 3"),
            json!({ "or": [ { "field": "a", "eq": "1" }, { "and": [ { "field": "b", "eq": "2" }, { "field": "c", "eq": "3" } ] } ] })
        );
        assert_eq!(
            t("(a = 1 OR b = 2) AND NOT c = 3"),
            json!({ "and": [ { "or": [ { "field": "a", "eq": "1" }, { "field": "b", "eq": "2" } ] }, { "not": { "field": "c", "eq": "3" } } ] })
        );
        assert_eq!(t("not not a = 1"), json!({ "not": { "not": { "field": "a", "eq": "1" } } }));
        // A quoted keyword is a value.
        assert_eq!(t("a = 'AND'"), json!({ "field": "a", "eq": "AND" }));
    }

    #[test]
    fn array_form() {
        let v = translate(&json!(["a = 1", ["b = 2", "b = 3"], []])).unwrap().unwrap();
        assert_eq!(v, json!({ "and": [ { "field": "a", "eq": "1" }, { "or": [ { "field": "b", "eq": "2" }, { "field": "b", "eq": "3" } ] } ] }));
        assert_eq!(translate(&json!([])).unwrap(), None);
        assert_eq!(translate(&json!("  ")).unwrap(), None);
        assert_eq!(translate(&Value::Null).unwrap(), None);
        let mut attrs = Vec::new();
        attributes(&v, &mut attrs);
        assert_eq!(attrs, ["a", "b"]);
    }

    proptest::proptest! {
        /// Any text is a filter or a clear `invalid_search_filter`, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(s in "\\PC{0,80}") {
            if let Err(e) = parse_str(&s) {
                proptest::prop_assert_eq!(e.code, "invalid_search_filter");
            }
        }

        /// Filters made of the grammar's pieces in any order, likewise.
        #[test]
        fn grammar_soup_parses_or_is_refused(parts in proptest::collection::vec(proptest::sample::select(vec![
            "a", "'b c'", "\"d\"", "=", "!=", ">=", "<", "TO", "IN", "[", "]", ",", "(", ")", "NOT", "AND", "OR", "EXISTS", "IS", "NULL", "EMPTY", "STARTS", "WITH", "1",
        ]), 0..24)) {
            if let Err(e) = parse_str(&parts.join(" ")) {
                proptest::prop_assert_eq!(e.code, "invalid_search_filter");
            }
        }
    }

    #[test]
    fn refuses_with_meilisearch_messages() {
        for (bad, needle) in [
            ("genre", "Was expecting an operation"),
            ("genre horror", "Was expecting an operation"),
            ("genre = ", "Was expecting a value"),
            ("(a = 1", "closing delimiter: `)`"),
            ("a = 1 b = 2", "unexpected characters"),
            ("a IN G", "Expected `[`"),
            ("a IN [G", "Expected matching `]`"),
            ("a IN [G H]", "comma-separated"),
            ("a = 'open", "missing a closing quote"),
            ("_geoRadius(1, 2, 3)", "not supported"),
            ("a CONTAINS x", "not supported"),
            ("a IS maybe", "`NULL` or `EMPTY`"),
            ("AND", "Was expecting an operation"),
            ("a ! b", "Was expecting a value"),
        ] {
            let e = parse_str(bad).expect_err(bad);
            assert_eq!(e.code, "invalid_search_filter", "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
        assert!(translate(&json!(3)).unwrap_err().message.contains("expected an array or a string"));
        assert!(translate(&json!([[["a = 1"]]])).is_err());
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse_str(&deep).unwrap_err().message.contains("maximum depth"));
        assert!(parse_str(&"NOT ".repeat(100)).is_err());
    }
}
