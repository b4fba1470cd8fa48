//! The relevance keys of a search target: `synonyms`, `stop_words`, `prefix_search`,
//! `typo_tolerance` and `distinct` (see `pipeline::relevance` for what they do).

use std::collections::BTreeMap;

use super::checker::{get, Checker};
use crate::pipeline::relevance::{normalized, PrefixSearch, Relevance, TypoTolerance, MAX_SYNONYMS_PER_KEY};
use crate::pipeline::yaml::{Key, Node, Value};
use crate::pipeline::{SearchField, SearchType};

/// The keys of a search target read here.
pub(super) const KEYS: [&str; 5] = ["synonyms", "stop_words", "prefix_search", "typo_tolerance", "distinct"];

pub(super) fn check(c: &mut Checker, entries: &[(Key, Node)], fields: &[SearchField]) -> Relevance {
    let mut r = Relevance::default();
    if let Some(n) = get(entries, "synonyms") {
        r.synonyms = synonyms(c, n);
    }
    if let Some(n) = get(entries, "stop_words") {
        if let Some(list) = c.string_list(n, "`stop_words`") {
            for (w, pos) in list {
                let word = normalized(&w);
                if word.is_empty() || word.contains(' ') {
                    c.err(pos, format!("stop word `{w}` must be one word"));
                } else {
                    r.stop_words.insert(word);
                }
            }
        }
    }
    if let Some(n) = get(entries, "prefix_search") {
        match c.string(n, "`prefix_search`").as_deref() {
            Some("last_word") => r.prefix_search = PrefixSearch::LastWord,
            Some("off") => r.prefix_search = PrefixSearch::Off,
            Some(other) => c.err(n.pos, format!("unknown prefix_search `{other}` (expected last_word or off)")),
            None => {}
        }
    }
    if let Some(n) = get(entries, "typo_tolerance") {
        r.typo_tolerance = typo_tolerance(c, n, fields);
    }
    if let Some(n) = get(entries, "distinct") {
        if let Some(name) = c.string(n, "`distinct`") {
            match fields.iter().find(|f| f.name == name) {
                Some(f) if distinct_capable(f) => r.distinct = Some(name),
                Some(_) => c.err(
                    n.pos,
                    format!("`distinct` needs a keyword field declared `facet`, `filterable` or `sortable` (deriver reads its values per document); `{name}` is not"),
                ),
                None => c.err(n.pos, format!("`distinct` names `{name}`, which is not a field of this search target")),
            }
        }
    }
    r
}

/// Whether a field can be a `distinct` attribute: a keyword field with a column of values.
pub fn distinct_capable(f: &SearchField) -> bool {
    f.ty == SearchType::Keyword && (f.facet || f.filterable || f.sortable)
}

fn words(c: &mut Checker, node: &Node, what: &str) -> Vec<String> {
    let list = match &node.value {
        Value::Seq(_) => c.string_list(node, what).unwrap_or_default(),
        _ => c.string(node, what).map(|s| vec![(s, node.pos)]).unwrap_or_default(),
    };
    let mut out = Vec::new();
    for (w, pos) in list {
        let n = normalized(&w);
        if n.is_empty() {
            c.err(pos, format!("synonym `{w}` has no word in it"));
        } else if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// `synonyms:` as Meilisearch's map (`word: [words]`, one-way unless the other way is declared
/// too), or a list of groups whose words all match each other (`- [great, fantastic]`).
fn synonyms(c: &mut Checker, node: &Node) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |c: &mut Checker, key: String, alts: Vec<String>, pos| {
        let entry = out.entry(key.clone()).or_default();
        for a in alts {
            if a != key && !entry.contains(&a) {
                entry.push(a);
            }
        }
        if entry.len() > MAX_SYNONYMS_PER_KEY {
            c.err(pos, format!("`{key}` has {} synonyms; at most {MAX_SYNONYMS_PER_KEY}", entry.len()));
            entry.truncate(MAX_SYNONYMS_PER_KEY);
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let key = normalized(&k.name);
                if key.is_empty() {
                    c.err(k.pos, format!("synonym key `{}` has no word in it", k.name));
                    continue;
                }
                let alts = words(c, v, "a synonym");
                add(c, key, alts, k.pos);
            }
        }
        Value::Seq(groups) => {
            for g in groups {
                if !matches!(g.value, Value::Seq(_)) {
                    c.err(g.pos, format!("a synonym group must be a list of words, found {}", g.value.type_name()));
                    continue;
                }
                let members = words(c, g, "a synonym");
                if members.len() < 2 {
                    c.err(g.pos, "a synonym group needs at least two different words");
                }
                for m in &members {
                    add(c, m.clone(), members.clone(), g.pos);
                }
            }
        }
        other => c.err(
            node.pos,
            format!("`synonyms` must be a mapping (word: [words], one-way) or a list of groups ([words], multi-way), found {}", other.type_name()),
        ),
    }
    out.retain(|_, v| !v.is_empty());
    out
}

fn typo_tolerance(c: &mut Checker, node: &Node, fields: &[SearchField]) -> TypoTolerance {
    let mut t = TypoTolerance::default();
    if let Value::Bool(b) = node.value {
        t.enabled = b;
        return t;
    }
    let allowed = ["enabled", "min_word_size_for_typos", "disable_on_attributes", "disable_on_words", "disable_on_numbers"];
    let Some(entries) = c.map(node, "`typo_tolerance`", &allowed) else { return t };
    if let Some(n) = get(entries, "enabled") {
        t.enabled = c.boolean(n, "`enabled`").unwrap_or(true);
    }
    if let Some(n) = get(entries, "min_word_size_for_typos") {
        if let Some(sizes) = c.map(n, "`min_word_size_for_typos`", &["one_typo", "two_typos"]) {
            let size = |c: &mut Checker, name: &str, default: u8| match get(sizes, name) {
                None => default,
                Some(n) => match n.value {
                    Value::Int(i @ 0..=255) => i as u8,
                    _ => {
                        c.err(n.pos, format!("`{name}` is a number of letters, 0 to 255"));
                        default
                    }
                },
            };
            t.one_typo = size(c, "one_typo", t.one_typo);
            t.two_typos = size(c, "two_typos", t.two_typos);
            if t.one_typo > t.two_typos {
                c.err(n.pos, format!("`one_typo` ({}) must not be larger than `two_typos` ({})", t.one_typo, t.two_typos));
            }
        }
    }
    if let Some(n) = get(entries, "disable_on_attributes") {
        for (name, pos) in c.string_list(n, "`disable_on_attributes`").unwrap_or_default() {
            match fields.iter().find(|f| f.name == name) {
                Some(f) if f.ty == SearchType::Text => t.disable_on_attributes.push(name),
                Some(_) => c.err(pos, format!("`{name}` is not a text field: only text fields match with typos")),
                None => c.err(pos, format!("`{name}` is not a field of this search target")),
            }
        }
    }
    if let Some(n) = get(entries, "disable_on_words") {
        for (w, pos) in c.string_list(n, "`disable_on_words`").unwrap_or_default() {
            let word = normalized(&w);
            if word.is_empty() || word.contains(' ') {
                c.err(pos, format!("`{w}` must be one word"));
            } else {
                t.disable_on_words.insert(word);
            }
        }
    }
    if let Some(n) = get(entries, "disable_on_numbers") {
        t.disable_on_numbers = c.boolean(n, "`disable_on_numbers`").unwrap_or(false);
    }
    t
}

#[cfg(test)]
mod tests {
    use crate::pipeline::check::check;
    use crate::pipeline::relevance::PrefixSearch;

    fn yaml(extra: &str) -> String {
        format!(
            "version: 1\npipeline: films\nsource: {{ table: film }}\nfields: {{ film_id: film.film_id, title: film.title, sku: film.sku, family: film.family, rate: film.rate }}\ntargets:\n  - search:\n      id: film_id\n      fields:\n        title: {{ type: text, stored: true }}\n        sku: {{ type: text, fuzzy: 1 }}\n        family: {{ type: keyword, facet: true, stored: true }}\n        rate: {{ type: f64, filterable: true }}\n{extra}"
        )
    }

    fn errors(extra: &str) -> Vec<String> {
        match check(std::path::Path::new("films.yaml"), &yaml(extra)) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn reads_every_setting() {
        let extra = "      synonyms:\n        SF: [San Francisco]\n        great: fantastic\n        fantastic: [great, Super]\n      stop_words: [The, a]\n      prefix_search: off\n      typo_tolerance:\n        min_word_size_for_typos: { one_typo: 4, two_typos: 8 }\n        disable_on_attributes: [sku]\n        disable_on_words: [Robot]\n        disable_on_numbers: true\n      distinct: family\n";
        let p = check(std::path::Path::new("films.yaml"), &yaml(extra)).unwrap();
        let r = &p.search[0].relevance;
        assert_eq!(r.synonyms["sf"], vec!["san francisco"]);
        assert_eq!(r.synonyms["great"], vec!["fantastic"]);
        assert_eq!(r.synonyms["fantastic"], vec!["great", "super"]);
        assert_eq!(r.stop_words.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "the"]);
        assert_eq!(r.prefix_search, PrefixSearch::Off);
        let t = &r.typo_tolerance;
        assert_eq!((t.enabled, t.one_typo, t.two_typos, t.disable_on_numbers), (true, 4, 8, true));
        assert_eq!(t.disable_on_attributes, vec!["sku"]);
        assert!(t.disable_on_words.contains("robot"));
        assert_eq!(r.distinct.as_deref(), Some("family"));
        assert_eq!(p.search[0].fields[0].fuzzy, None);
        assert_eq!(p.search[0].fields[1].fuzzy, Some(1));
    }

    #[test]
    fn groups_are_multi_way_and_settings_leave_the_hash_alone() {
        let p =
            check(std::path::Path::new("films.yaml"), &yaml("      synonyms:\n        - [great, fantastic, Superb]\n      typo_tolerance: false\n")).unwrap();
        let r = &p.search[0].relevance;
        assert_eq!(r.synonyms["great"], vec!["fantastic", "superb"]);
        assert_eq!(r.synonyms["superb"], vec!["great", "fantastic"]);
        assert!(!r.typo_tolerance.enabled);
        let plain = check(std::path::Path::new("films.yaml"), &yaml("")).unwrap();
        assert_eq!(p.search_hash(&p.search[0]), plain.search_hash(&plain.search[0]), "query-time settings do not rebuild the index");
    }

    #[test]
    fn refuses_bad_settings_with_positions() {
        for (extra, needle) in [
            ("      distinct: title\n", "films.yaml:13:17: error: `distinct` needs a keyword field"),
            ("      distinct: rate\n", "`distinct` needs a keyword field"),
            ("      distinct: nope\n", "`distinct` names `nope`, which is not a field"),
            ("      prefix_search: always\n", "films.yaml:13:22: error: unknown prefix_search `always`"),
            ("      stop_words: [\"two words\"]\n", "stop word `two words` must be one word"),
            ("      synonyms: [[alone]]\n", "a synonym group needs at least two different words"),
            ("      synonyms: [great]\n", "a synonym group must be a list of words"),
            ("      synonyms: great\n", "`synonyms` must be a mapping"),
            ("      synonyms: { \"!!\": [x] }\n", "synonym key `!!` has no word in it"),
            ("      typo_tolerance: { min_word_size_for_typos: { one_typo: 9, two_typos: 5 } }\n", "`one_typo` (9) must not be larger than `two_typos` (5)"),
            ("      typo_tolerance: { min_word_size_for_typos: { one_typo: 300 } }\n", "`one_typo` is a number of letters"),
            ("      typo_tolerance: { disable_on_attributes: [family] }\n", "`family` is not a text field"),
            ("      typo_tolerance: { disable_on_attributes: [nope] }\n", "`nope` is not a field of this search target"),
            ("      typo_tolerance: { often: true }\n", "unknown key `often` in `typo_tolerance`"),
        ] {
            let errs = errors(extra);
            assert!(errs.iter().any(|e| e.contains(needle)), "{extra}: {errs:?}");
        }
    }
}
