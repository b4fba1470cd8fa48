//! `_formatted` and `_matchesPosition` of a hit: highlight tags around the words that matched,
//! text cropped to `cropLength` words around the matches, positions of the matches. Pure: the
//! caller tokenizes each value with the field's analyzer and says which tokens matched.

use serde_json::{Map, Value};

/// One token of a text: its byte range, and whether it matched the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub from: usize,
    pub to: usize,
    pub matched: bool,
}

/// How to format one attribute.
#[derive(Debug, Clone)]
pub struct Formatting<'a> {
    /// Highlight tags, when the attribute is highlighted.
    pub tags: Option<(&'a str, &'a str)>,
    /// Crop length in words and the marker, when the attribute is cropped.
    pub crop: Option<(usize, &'a str)>,
}

/// The window of `len` tokens to keep: around the first match, centred as far as the text allows.
fn crop_window(tokens: &[Token], len: usize) -> (usize, usize) {
    let n = tokens.len();
    if len >= n {
        return (0, n);
    }
    let start = match tokens.iter().position(|t| t.matched) {
        None => 0,
        Some(first) => {
            // Matches within reach after the first one stay in the window; the rest is shared
            // out before and after them.
            let last = tokens[first..].iter().enumerate().filter(|(i, t)| t.matched && *i < len).map(|(i, _)| first + i).next_back().unwrap_or(first);
            let spare = len - (last - first + 1);
            first.saturating_sub(spare / 2).min(n - len)
        }
    };
    (start, start + len)
}

/// The text of one value, formatted.
pub fn format_text(text: &str, tokens: &[Token], f: &Formatting<'_>) -> String {
    let (start, end, from, to) = match f.crop {
        Some(_) if tokens.is_empty() => return text.to_string(),
        Some((0, _)) => return String::new(),
        Some((len, _)) => {
            let (s, e) = crop_window(tokens, len);
            (s, e, tokens[s].from, tokens[e - 1].to)
        }
        None => (0, tokens.len(), 0, text.len()),
    };
    let mut out = String::with_capacity(to - from + 16);
    if let Some((_, marker)) = f.crop {
        if start > 0 {
            out.push_str(marker);
        }
    }
    let mut at = from;
    for t in &tokens[start..end] {
        if t.from < at || t.to > to {
            // Overlapping or out-of-window tokens (no analyzer of deriver makes them) are skipped.
            continue;
        }
        if let (true, Some((pre, post))) = (t.matched, f.tags) {
            out.push_str(&text[at..t.from]);
            out.push_str(pre);
            out.push_str(&text[t.from..t.to]);
            out.push_str(post);
            at = t.to;
        }
    }
    out.push_str(&text[at..to]);
    if let Some((_, marker)) = f.crop {
        if end < tokens.len() {
            out.push_str(marker);
        }
    }
    out
}

/// `_matchesPosition` entries of one value: `{"start": byte, "length": bytes}` per match
/// (`indices` when the value is an element of a list).
pub fn match_positions(tokens: &[Token], index: Option<usize>) -> Vec<Value> {
    tokens
        .iter()
        .filter(|t| t.matched)
        .map(|t| {
            let mut m = Map::new();
            m.insert("start".into(), Value::from(t.from));
            m.insert("length".into(), Value::from(t.to - t.from));
            if let Some(i) = index {
                m.insert("indices".into(), Value::from(vec![i]));
            }
            Value::Object(m)
        })
        .collect()
}

/// A value as `_formatted` shows it when it is not text: numbers and booleans as strings, lists
/// and objects member by member (as Meilisearch does).
pub fn stringify(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(stringify).collect()),
        Value::Object(obj) => Value::Object(obj.iter().map(|(k, v)| (k.clone(), stringify(v))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens of whitespace-separated words; the words in `hits` matched.
    fn tokens(text: &str, hits: &[&str]) -> Vec<Token> {
        let mut out = Vec::new();
        let mut at = 0;
        for w in text.split(' ') {
            let clean = w.trim_matches(|c: char| !c.is_alphanumeric());
            if !clean.is_empty() {
                let from = at + w.find(clean).unwrap();
                out.push(Token { from, to: from + clean.len(), matched: hits.iter().any(|h| h.eq_ignore_ascii_case(clean)) });
            }
            at += w.len() + 1;
        }
        out
    }

    const TEXT: &str = "A Fanciful Documentary of a Frisbee And a Lumberjack who must Chase a Monkey in A Shark Tank";

    #[test]
    fn highlights_every_match() {
        let t = tokens(TEXT, &["frisbee", "monkey"]);
        let f = Formatting { tags: Some(("<em>", "</em>")), crop: None };
        assert_eq!(format_text(TEXT, &t, &f), TEXT.replace("Frisbee", "<em>Frisbee</em>").replace("Monkey", "<em>Monkey</em>"));
        let none = Formatting { tags: None, crop: None };
        assert_eq!(format_text(TEXT, &t, &none), TEXT);
        // Punctuation and unicode around words stay as they are.
        let text = "«Héllo», world!";
        let t = tokens(text, &["héllo"]);
        assert_eq!(format_text(text, &t, &f), "«<em>Héllo</em>», world!");
    }

    #[test]
    fn crops_around_the_matches() {
        let t = tokens(TEXT, &["lumberjack"]);
        let f = Formatting { tags: Some(("[", "]")), crop: Some((5, "…")) };
        assert_eq!(format_text(TEXT, &t, &f), "…And a [Lumberjack] who must…");
        // No match: the beginning.
        let t = tokens(TEXT, &[]);
        assert_eq!(format_text(TEXT, &t, &f), "A Fanciful Documentary of a…");
        // A match at the end: the window ends with the text.
        let t = tokens(TEXT, &["tank"]);
        assert_eq!(format_text(TEXT, &t, &Formatting { tags: None, crop: Some((3, "...")) }), "...A Shark Tank");
        // Longer than the text: all of it, no marker.
        let t = tokens(TEXT, &["a"]);
        assert_eq!(format_text(TEXT, &t, &Formatting { tags: None, crop: Some((100, "…")) }), TEXT);
        // Two matches close together stay in one window.
        let t = tokens(TEXT, &["frisbee", "lumberjack"]);
        assert_eq!(format_text(TEXT, &t, &Formatting { tags: None, crop: Some((6, "…")) }), "…a Frisbee And a Lumberjack who…");
    }

    #[test]
    fn overlapping_tokens_do_not_break_formatting() {
        let text = "abc def";
        let t = [Token { from: 0, to: 3, matched: true }, Token { from: 1, to: 2, matched: true }, Token { from: 4, to: 7, matched: true }];
        assert_eq!(format_text(text, &t, &Formatting { tags: Some(("[", "]")), crop: None }), "[abc] [def]");
    }

    #[test]
    fn positions_and_strings() {
        let t = tokens(TEXT, &["frisbee"]);
        assert_eq!(match_positions(&t, None), vec![serde_json::json!({ "start": 28, "length": 7 })]);
        assert_eq!(&TEXT[28..35], "Frisbee");
        assert_eq!(match_positions(&t, Some(2))[0]["indices"], serde_json::json!([2]));
        assert_eq!(stringify(&serde_json::json!({ "a": [1, true, "x"] })), serde_json::json!({ "a": ["1", "true", "x"] }));
    }
}
