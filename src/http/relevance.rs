//! A parsed query read with its search target's relevance settings: stop words left out,
//! synonyms added as alternatives of the words they are declared for (see
//! `pipeline::relevance`). Typos and prefixes are decided per field when the query is compiled
//! (`search.rs`).

use super::query::{Clause, ParsedQuery, Term};
use crate::pipeline::relevance::{normalized, Relevance};

/// A synonym as a query alternative: matched as written (a phrase when it has several words),
/// without typos or prefix, in the field of the word it stands for.
fn synonym(field: &Option<String>, text: &str) -> Term {
    Term { field: field.clone(), text: text.to_string(), phrase: true, prefix: false }
}

/// A word that may stand in a synonym key: unquoted, searched in the default fields.
fn plain_word(c: &Clause) -> Option<&Term> {
    match c {
        Clause::Any(t) if t.len() == 1 && !t[0].phrase && t[0].field.is_none() => Some(&t[0]),
        _ => None,
    }
}

/// `parsed` without its stop words, with synonyms: a word (or a run of consecutive words) that
/// is a synonym key matches itself or any of its synonyms. A run of several words matches
/// itself as a phrase. A query of nothing but stop words matches everything, as an empty one.
pub fn apply(parsed: ParsedQuery, rel: &Relevance) -> ParsedQuery {
    let kept = |t: &Term| t.phrase || !rel.is_stop_word(&t.text);
    let clauses: Vec<Clause> = parsed
        .clauses
        .into_iter()
        .filter_map(|c| match c {
            Clause::Any(terms) => {
                let terms: Vec<Term> = terms.into_iter().filter(kept).collect();
                (!terms.is_empty()).then_some(Clause::Any(terms))
            }
            Clause::Not(t) => kept(&t).then_some(Clause::Not(t)),
        })
        .collect();
    if rel.synonyms.is_empty() {
        return ParsedQuery { clauses };
    }
    let longest = rel.longest_key();
    let mut out = Vec::with_capacity(clauses.len());
    let mut i = 0;
    'clauses: while i < clauses.len() {
        for n in (2..=longest.min(clauses.len() - i)).rev() {
            let Some(words) = clauses[i..i + n].iter().map(plain_word).collect::<Option<Vec<&Term>>>() else { continue };
            let text = words.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
            if let Some(alts) = rel.synonyms.get(&normalized(&text)) {
                let mut terms = vec![synonym(&None, &text)];
                terms.extend(alts.iter().map(|a| synonym(&None, a)));
                out.push(Clause::Any(terms));
                i += n;
                continue 'clauses;
            }
        }
        out.push(match &clauses[i] {
            Clause::Any(terms) => {
                let mut all = Vec::with_capacity(terms.len());
                for t in terms {
                    all.push(t.clone());
                    if !t.phrase {
                        if let Some(alts) = rel.synonyms.get(&normalized(&t.text)) {
                            all.extend(alts.iter().map(|a| synonym(&t.field, a)));
                        }
                    }
                }
                Clause::Any(all)
            }
            not => not.clone(),
        });
        i += 1;
    }
    ParsedQuery { clauses: out }
}

/// Whether some text field among `names` holds the word `term` as typed (one token after its
/// analyzer) in the index's current searcher.
pub(super) fn held_as_typed(term: &super::query::Term, names: &[&str], index: &crate::sink::tantivy::SearchIndex) -> bool {
    let searcher = index.reader.searcher();
    names.iter().any(|name| {
        let (Some(decl), Ok(handle)) = (super::search::field(index, name), index.schema.get_field(name)) else { return false };
        if decl.ty != crate::pipeline::SearchType::Text {
            return false;
        }
        let tokens = super::search::analyze(index, handle, &term.text);
        tokens.len() == 1 && searcher.doc_freq(&tantivy::Term::from_field_text(handle, &tokens[0].1)).is_ok_and(|n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::parse;

    fn rel() -> Relevance {
        Relevance {
            synonyms: [
                ("sf".to_string(), vec!["san francisco".to_string()]),
                ("san francisco".to_string(), vec!["sf".to_string()]),
                ("phone".to_string(), vec!["iphone".to_string()]),
                ("resume".to_string(), vec!["cv".to_string()]),
            ]
            .into(),
            stop_words: ["the".to_string(), "of".to_string()].into(),
            ..Relevance::default()
        }
    }

    fn q(text: &str) -> Vec<Clause> {
        apply(parse(text, |f| f == "title"), &rel()).clauses
    }

    fn w(text: &str, prefix: bool) -> Term {
        Term { field: None, text: text.into(), phrase: false, prefix }
    }

    fn s(text: &str) -> Term {
        synonym(&None, text)
    }

    #[test]
    fn stop_words_leave_the_query() {
        assert_eq!(q("The lord of the rings "), vec![Clause::Any(vec![w("lord", false)]), Clause::Any(vec![w("rings", false)])]);
        assert_eq!(q("lord -the"), vec![Clause::Any(vec![w("lord", false)])]);
        assert!(q("the of THE").is_empty(), "nothing left: matches everything");
        // Quoted, a stop word stays (a phrase matches as written).
        assert_eq!(q("\"the end\"").len(), 1);
    }

    #[test]
    fn synonyms_are_alternatives_one_way_or_both() {
        assert_eq!(q("phone case "), vec![Clause::Any(vec![w("phone", false), s("iphone")]), Clause::Any(vec![w("case", false)])]);
        // One-way: iphone does not bring phone.
        assert_eq!(q("iphone "), vec![Clause::Any(vec![w("iphone", false)])]);
        // Normalized: Résumé is resume; the word keeps its prefix flag, the synonym has none.
        assert_eq!(q("Résumé"), vec![Clause::Any(vec![w("Résumé", true), s("cv")])]);
        // Multi-word keys match consecutive words, longest first.
        assert_eq!(q("hotels San Francisco "), vec![Clause::Any(vec![w("hotels", false)]), Clause::Any(vec![s("San Francisco"), s("sf")])]);
        assert_eq!(q("sf hotels "), vec![Clause::Any(vec![w("sf", false), s("san francisco")]), Clause::Any(vec![w("hotels", false)])]);
        // A field word keeps its field; negated words get none.
        let title = Term { field: Some("title".into()), text: "phone".into(), phrase: false, prefix: false };
        assert_eq!(q("title:phone "), vec![Clause::Any(vec![title, synonym(&Some("title".into()), "iphone")])]);
        assert_eq!(q("a -phone"), vec![Clause::Any(vec![w("a", false)]), Clause::Not(w("phone", false))]);
    }

    mod searches {
        use serde_json::json;

        use crate::http::search::tests::{films_with, ids, run};

        fn total(idx: &crate::sink::tantivy::SearchIndex, q: &str) -> u64 {
            run(idx, json!({ "q": q })).unwrap().total.value
        }

        #[test]
        fn typos_by_word_length_on_by_default() {
            let idx = films_with(30, "");
            assert_eq!(total(&idx, "title:drama "), 20);
            assert_eq!(total(&idx, "title:dramma "), 20, "6 letters: one typo");
            assert_eq!(total(&idx, "title:drma "), 0, "4 letters: exact");
            assert_eq!(total(&idx, "description:dinosuars "), 30, "transposition: one typo");
            assert_eq!(total(&idx, "description:dinnosuars "), 30, "10 letters: two typos");
            assert_eq!(total(&idx, "description:nmubr "), 0, "5 letters: one typo, not two");
            assert_eq!(total(&idx, "title:robbot "), 10);
            let off = films_with(30, "      typo_tolerance: false\n");
            assert_eq!(total(&off, "title:dramma "), 0);
            let short = films_with(30, "      typo_tolerance: { min_word_size_for_typos: { one_typo: 3, two_typos: 4 } }\n");
            assert_eq!(total(&short, "title:drma "), 20);
            let exact = films_with(30, "      typo_tolerance: { disable_on_attributes: [description] }\n");
            assert_eq!(total(&exact, "description:dinosuars "), 0);
            // A word the index holds as typed gets no typos: `12` is a title word, so `11`, `13`,
            // `2`… (one typo away) do not match it; `31` is not, so its neighbours do.
            let two = films_with(30, "      typo_tolerance: { min_word_size_for_typos: { one_typo: 2, two_typos: 9 } }\n");
            assert_eq!(total(&two, "title:12 "), 1);
            assert!(total(&two, "title:31 ") > 1);
            // An exact match ranks before a typo match.
            let r = run(&idx, json!({ "q": "title:drama OR title:roboto ", "limit": 30 })).unwrap();
            assert!(r.hits[..20].iter().all(|h| h.doc["title"].as_str().unwrap().contains("Drama")), "{:?}", ids(&r));
        }

        #[test]
        fn the_last_word_is_a_prefix_unless_a_space_follows() {
            let idx = films_with(30, "");
            assert_eq!(total(&idx, "title:rob"), 10);
            assert_eq!(total(&idx, "title:rob "), 0);
            assert_eq!(total(&idx, "title:rob drama"), 0, "only the last word");
            assert_eq!(total(&idx, "title:drama title:fi"), 20);
            assert_eq!(total(&idx, "title:roboz"), 10, "prefix with a typo");
            let r = run(&idx, json!({ "q": "title:rob", "highlight": {} })).unwrap();
            assert!(r.hits[0].highlights["title"].as_str().unwrap().contains("<mark>Robot</mark>"), "{:?}", r.hits[0].highlights);
            let off = films_with(30, "      prefix_search: off\n");
            assert_eq!(total(&off, "title:rob"), 0);
        }

        #[test]
        fn synonyms_and_stop_words_shape_the_query() {
            let plain = films_with(30, "");
            assert_eq!((total(&plain, "title:robot "), total(&plain, "sci fi "), total(&plain, "the title:robot ")), (10, 0, 0));
            let one_way = films_with(30, "      synonyms:\n        robot: [drama]\n        Sci Fi: [robot]\n");
            assert_eq!(total(&one_way, "title:robot "), 30, "robot or drama");
            assert_eq!(total(&one_way, "title:drama "), 20, "one-way: drama does not bring robot");
            assert_eq!(total(&one_way, "sci fi "), 30, "a multi-word key");
            let group = films_with(30, "      synonyms:\n        - [robot, drama]\n");
            assert_eq!((total(&group, "title:robot "), total(&group, "title:drama ")), (30, 30));
            let stop = films_with(30, "      stop_words: [The]\n");
            assert_eq!(total(&stop, "the title:robot "), 10);
            assert_eq!(total(&stop, "THE "), 30, "only stop words: everything");
        }

        #[test]
        fn distinct_keeps_the_best_hit_per_value() {
            let idx = films_with(30, "      distinct: rating\n");
            let r = run(&idx, json!({ "q": "title:robot OR title:drama ", "facets": { "rating": {}, "tags": {} } })).unwrap();
            assert_eq!(r.total.value, 3);
            let ratings: Vec<&str> = r.hits.iter().map(|h| h.doc["rating"].as_str().unwrap()).collect();
            assert_eq!(ratings.len(), 3);
            assert!(["G", "PG", "R"].iter().all(|x| ratings.contains(x)), "{ratings:?}");
            assert_eq!(r.facets["rating"], json!({ "G": 1, "PG": 1, "R": 1 }), "facets count the distinct hits");
            // The best of each value: rating G is i % 3 == 0, the Robot titles (boosted): id 3 first by id.
            let g = r.hits.iter().find(|h| h.doc["rating"] == "G").unwrap();
            assert_eq!(g.id, "3");
            // Pages: offsets and cursors walk the three values once each.
            let all = ids(&r);
            let p2 = run(&idx, json!({ "q": "title:robot OR title:drama ", "limit": 1, "offset": 1 })).unwrap();
            assert_eq!(ids(&p2), all[1..2]);
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let p = run(&idx, json!({ "q": "title:robot OR title:drama ", "limit": 1, "cursor": cursor })).unwrap();
                seen.extend(ids(&p));
                match p.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen, all);
            // Sorted by a field, without words.
            let r = run(&idx, json!({ "sort": ["rate:desc"] })).unwrap();
            assert_eq!(r.hits.iter().map(|h| h.doc["rate"].as_f64().unwrap()).collect::<Vec<_>>(), vec![4.99, 2.99, 0.99]);
            // A request's `distinct` overrides the target's; a field without values per document is refused.
            let plain = films_with(30, "");
            assert_eq!(run(&plain, json!({ "distinct": "rating" })).unwrap().total.value, 3);
            assert_eq!(run(&plain, json!({})).unwrap().total.value, 30);
            let e = run(&plain, json!({ "distinct": "title" })).err().unwrap();
            assert_eq!((e.code, e.extra("field").and_then(|v| v.as_str())), ("invalid_distinct", Some("title")));
        }
    }
}
