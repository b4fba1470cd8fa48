//! The search box language (`q`), parsed leniently: any input gives a query, never an error.
//!
//! - words are ANDed: `drama robot`
//! - `"a phrase"` (an unclosed quote runs to the end)
//! - `field:term`, `field:"a phrase"` (an unknown field name is just text)
//! - `-term`, `-"phrase"`, `NOT term`: must not match
//! - `a OR b`: either; `OR` binds its two neighbours (`x a OR b` = x AND (a OR b))
//! - `AND`, `+`, parentheses are accepted and ignored; dangling `OR`s are ignored.
//! - the last word, when nothing follows it (not even a space), is marked `prefix` (search as
//!   you type: the search target's `prefix_search` decides whether it matches as a prefix).

/// One term: a word or a phrase, searched in one field or in the default search fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub field: Option<String>,
    pub text: String,
    pub phrase: bool,
    /// The query's last word, typed up to the end of the input: it may be unfinished.
    pub prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// At least one of these terms must match (one term, or terms joined by `OR`).
    Any(Vec<Term>),
    /// This term must not match.
    Not(Term),
}

/// The clauses are ANDed. No clause: everything matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedQuery {
    pub clauses: Vec<Clause>,
}

/// Terms beyond this many are ignored (a search box is not a bulk interface).
pub const MAX_TERMS: usize = 64;
/// A term's text is cut to this many characters.
pub const MAX_TERM_CHARS: usize = 256;

#[derive(Debug, PartialEq)]
enum Token {
    Word { negated: bool, term: Term },
    Or,
}

impl ParsedQuery {
    /// Every positive term (for highlighting).
    pub fn positive_terms(&self) -> impl Iterator<Item = &Term> {
        self.clauses.iter().flat_map(|c| match c {
            Clause::Any(terms) => terms.as_slice(),
            Clause::Not(_) => &[],
        })
    }
}

/// Parses `q`. `is_field` tells which `name:` prefixes are field names.
pub fn parse(q: &str, is_field: impl Fn(&str) -> bool) -> ParsedQuery {
    let tokens = lex(q, &is_field);
    let mut clauses: Vec<Clause> = Vec::new();
    let mut join_next = false;
    let mut saw_or = false;
    let mut terms = 0usize;
    for tok in tokens {
        match tok {
            Token::Or => {
                saw_or = true;
                if matches!(clauses.last(), Some(Clause::Any(_))) {
                    join_next = true;
                }
            }
            Token::Word { negated, term } => {
                if terms >= MAX_TERMS {
                    break;
                }
                terms += 1;
                if negated {
                    clauses.push(Clause::Not(term));
                } else if join_next {
                    if let Some(Clause::Any(alts)) = clauses.last_mut() {
                        alts.push(term);
                    }
                } else {
                    clauses.push(Clause::Any(vec![term]));
                }
                join_next = false;
            }
        }
    }
    if clauses.is_empty() && saw_or {
        // The query was nothing but `OR`s: search the word itself.
        clauses.push(Clause::Any(vec![Term { field: None, text: "OR".into(), phrase: false, prefix: false }]));
    }
    ParsedQuery { clauses }
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')'
}

fn cut(text: &str) -> String {
    text.chars().take(MAX_TERM_CHARS).collect()
}

fn lex(q: &str, is_field: &impl Fn(&str) -> bool) -> Vec<Token> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut pending_not = false;
    while i < chars.len() {
        if is_separator(chars[i]) {
            i += 1;
            continue;
        }
        if out.len() > 4 * MAX_TERMS {
            break;
        }
        // Modifiers.
        let mut negated = std::mem::take(&mut pending_not);
        while i < chars.len() && (chars[i] == '-' || chars[i] == '+') {
            if chars[i] == '-' {
                negated = true;
            }
            i += 1;
        }
        if i >= chars.len() || is_separator(chars[i]) {
            // A lone `-` or `+`.
            continue;
        }
        if chars[i] == '"' {
            let (text, next) = read_phrase(&chars, i + 1);
            i = next;
            if !text.trim().is_empty() {
                out.push(Token::Word { negated, term: Term { field: None, text: cut(&text), phrase: true, prefix: false } });
            }
            continue;
        }
        // A bare chunk: up to a separator or a quote.
        let start = i;
        while i < chars.len() && !is_separator(chars[i]) && chars[i] != '"' {
            i += 1;
        }
        let chunk: String = chars[start..i].iter().collect();
        let prefix = !negated && i == chars.len();
        if !negated && chunk == "OR" {
            out.push(Token::Or);
            continue;
        }
        if !negated && chunk == "AND" {
            continue;
        }
        if chunk == "NOT" {
            pending_not = true;
            continue;
        }
        let field = chunk.split_once(':').map(|(f, rest)| (f.to_string(), rest.to_string()));
        match field {
            Some((f, rest)) if !f.is_empty() && is_field(&f) => {
                if rest.is_empty() && i < chars.len() && chars[i] == '"' {
                    let (text, next) = read_phrase(&chars, i + 1);
                    i = next;
                    if !text.trim().is_empty() {
                        out.push(Token::Word { negated, term: Term { field: Some(f), text: cut(&text), phrase: true, prefix: false } });
                    }
                } else if rest.is_empty() {
                    // `field:` with nothing after it: nothing to search for.
                } else {
                    out.push(Token::Word { negated, term: Term { field: Some(f), text: cut(&rest), phrase: false, prefix } });
                }
            }
            _ => {
                // (`word"…`: the word, then a phrase starts at the quote.)
                out.push(Token::Word { negated, term: Term { field: None, text: cut(&chunk), phrase: false, prefix } });
            }
        }
    }
    out
}

/// Reads a phrase starting after its opening quote; returns it and the index after the closing
/// quote (or the end when the quote is never closed).
fn read_phrase(chars: &[char], from: usize) -> (String, usize) {
    let mut i = from;
    while i < chars.len() && chars[i] != '"' {
        i += 1;
    }
    let text: String = chars[from..i].iter().collect();
    (text, if i < chars.len() { i + 1 } else { i })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str) -> bool {
        matches!(name, "title" | "rating" | "rate")
    }

    fn p(q: &str) -> ParsedQuery {
        parse(q, fields)
    }

    fn word(text: &str) -> Term {
        Term { field: None, text: text.into(), phrase: false, prefix: false }
    }

    /// The last word of a query, typed to the end.
    fn last(text: &str) -> Term {
        Term { prefix: true, ..word(text) }
    }

    fn any(terms: &[Term]) -> Clause {
        Clause::Any(terms.to_vec())
    }

    #[test]
    fn words_are_anded() {
        assert_eq!(p("drama robot").clauses, vec![any(&[word("drama")]), any(&[last("robot")])]);
        assert_eq!(p("  drama   AND robot ").clauses, vec![any(&[word("drama")]), any(&[word("robot")])]);
        assert!(p("").clauses.is_empty());
        assert!(p("   ").clauses.is_empty());
    }

    #[test]
    fn phrases_fields_negation_and_or() {
        let q = p(r#"title:"academy dinosaur" -boring rating:PG x OR y NOT z"#);
        assert_eq!(
            q.clauses,
            vec![
                any(&[Term { field: Some("title".into()), text: "academy dinosaur".into(), phrase: true, prefix: false }]),
                Clause::Not(word("boring")),
                any(&[Term { field: Some("rating".into()), text: "PG".into(), phrase: false, prefix: false }]),
                any(&[word("x"), word("y")]),
                Clause::Not(word("z")),
            ]
        );
        assert_eq!(p("a OR b OR c").clauses, vec![any(&[word("a"), word("b"), last("c")])]);
        assert_eq!(p(r#"-"bad phrase""#).clauses, vec![Clause::Not(Term { field: None, text: "bad phrase".into(), phrase: true, prefix: false })]);
    }

    #[test]
    fn only_a_last_word_typed_to_the_end_is_a_prefix() {
        assert_eq!(p("drama rob").clauses, vec![any(&[word("drama")]), any(&[last("rob")])]);
        assert_eq!(p("drama rob ").clauses, vec![any(&[word("drama")]), any(&[word("rob")])]);
        assert_eq!(p("title:rob").clauses, vec![any(&[Term { field: Some("title".into()), text: "rob".into(), phrase: false, prefix: true }])]);
        assert_eq!(p("drama -rob").clauses, vec![any(&[word("drama")]), Clause::Not(word("rob"))]);
        assert_eq!(p("(drama rob)").clauses, vec![any(&[word("drama")]), any(&[word("rob")])]);
        assert_eq!(p(r#""drama rob""#).clauses, vec![any(&[Term { field: None, text: "drama rob".into(), phrase: true, prefix: false }])]);
    }

    #[test]
    fn unknown_fields_are_text() {
        assert_eq!(p("http://x.org").clauses, vec![any(&[last("http://x.org")])]);
        assert_eq!(p("nope:thing").clauses, vec![any(&[last("nope:thing")])]);
        assert_eq!(p("12:30").clauses, vec![any(&[last("12:30")])]);
    }

    #[test]
    fn hostile_inputs_parse() {
        // Unbalanced quotes run to the end.
        assert_eq!(
            p(r#"robot "unclosed phrase"#).clauses,
            vec![any(&[word("robot")]), any(&[Term { field: None, text: "unclosed phrase".into(), phrase: true, prefix: false }]),]
        );
        assert!(p(r#"""#).clauses.is_empty());
        assert!(p(r#""""""#).clauses.is_empty());
        // Lone modifiers and empty fields.
        assert!(p("-").clauses.is_empty());
        assert!(p("- + -- ++").clauses.is_empty());
        assert!(p("title:").clauses.is_empty());
        assert_eq!(p("title: robot").clauses, vec![any(&[last("robot")])]);
        assert_eq!(p(":robot").clauses, vec![any(&[last(":robot")])]);
        // Dangling and repeated ORs.
        assert_eq!(p("OR OR").clauses, vec![any(&[word("OR")])]);
        assert_eq!(p("OR a").clauses, vec![any(&[last("a")])]);
        assert_eq!(p("a OR").clauses, vec![any(&[word("a")])]);
        assert_eq!(p("a OR OR b").clauses, vec![any(&[word("a"), last("b")])]);
        assert_eq!(p("a OR -b").clauses, vec![any(&[word("a")]), Clause::Not(word("b"))]);
        assert!(p("NOT").clauses.is_empty());
        assert!(p("((()))").clauses.is_empty());
        assert_eq!(p("(a OR b) c").clauses, vec![any(&[word("a"), word("b")]), any(&[last("c")])]);
        // Unicode.
        assert_eq!(p("café 東京 -ünï").clauses, vec![any(&[word("café")]), any(&[word("東京")]), Clause::Not(word("ünï"))]);
        assert_eq!(p("title:\"日本 語\"").clauses, vec![any(&[Term { field: Some("title".into()), text: "日本 語".into(), phrase: true, prefix: false }])]);
        // A quote glued to a word.
        assert_eq!(p(r#"a"b c""#).clauses, vec![any(&[word("a")]), any(&[Term { field: None, text: "b c".into(), phrase: true, prefix: false }])]);
    }

    #[test]
    fn huge_inputs_are_bounded() {
        let long = "x".repeat(10_000);
        let q = p(&long);
        assert_eq!(q.clauses.len(), 1);
        match &q.clauses[0] {
            Clause::Any(t) => assert_eq!(t[0].text.chars().count(), MAX_TERM_CHARS),
            other => panic!("{other:?}"),
        }
        let many = "word ".repeat(2_000);
        assert_eq!(p(&many).clauses.len(), MAX_TERMS);
        let noise: String = (0..10_000).map(|i| ['"', '-', ' ', ':', 'O', 'R', '(', 'é', '+', 'a'][i % 10]).collect();
        let _ = p(&noise);
        let ors = "OR ".repeat(5_000);
        assert_eq!(p(&ors).clauses.len(), 1);
    }
}
