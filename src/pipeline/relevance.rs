//! The relevance settings of a search target (`synonyms`, `stop_words`, `prefix_search`,
//! `typo_tolerance`, `distinct`): how a query's words are read, not how documents are indexed.
//! They are applied at query time, so they are not part of the index's definition hash: changing
//! them needs no new generation (a restart, or a reload, applies them).
//!
//! Words are compared normalized as Meilisearch does: lowercased and without accents
//! (`Résumé` = `resume`), cut into words as the `default` analyzer cuts them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer};

use super::model::{SearchField, SearchType};

/// Alternatives of one synonym key beyond this many are ignored (Meilisearch's limit).
pub const MAX_SYNONYMS_PER_KEY: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relevance {
    /// Normalized words (space-separated when several) → what a query for them also matches.
    pub synonyms: BTreeMap<String, Vec<String>>,
    /// Normalized words left out of queries.
    pub stop_words: BTreeSet<String>,
    pub prefix_search: PrefixSearch,
    pub typo_tolerance: TypoTolerance,
    /// A keyword field: at most one hit per value of it (the best ranked).
    pub distinct: Option<String>,
}

impl Default for Relevance {
    fn default() -> Relevance {
        Relevance {
            synonyms: BTreeMap::new(),
            stop_words: BTreeSet::new(),
            prefix_search: PrefixSearch::LastWord,
            typo_tolerance: TypoTolerance::default(),
            distinct: None,
        }
    }
}

/// Search-as-you-type: whether the last word of a query also matches the words it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixSearch {
    /// The last word, unless the query ends with a space or it is quoted (Meilisearch's rule).
    LastWord,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypoTolerance {
    pub enabled: bool,
    /// Words of at least this many characters match with one typo…
    pub one_typo: u8,
    /// …and of at least this many with two.
    pub two_typos: u8,
    /// Text fields matched exactly.
    pub disable_on_attributes: Vec<String>,
    /// Normalized words matched exactly.
    pub disable_on_words: BTreeSet<String>,
    /// Words made of digits matched exactly.
    pub disable_on_numbers: bool,
}

impl Default for TypoTolerance {
    /// Meilisearch's defaults: on, one typo from 5 letters, two from 9.
    fn default() -> TypoTolerance {
        TypoTolerance {
            enabled: true,
            one_typo: 5,
            two_typos: 9,
            disable_on_attributes: Vec::new(),
            disable_on_words: BTreeSet::new(),
            disable_on_numbers: false,
        }
    }
}

impl TypoTolerance {
    /// How many typos a query word (as typed) may have in `field`: by its length in letters and
    /// digits, capped by the field's `fuzzy`; 0 when typos are off for the field or the word.
    pub fn typos(&self, field: &SearchField, word: &str) -> u8 {
        if !self.enabled || field.ty != SearchType::Text || self.disable_on_attributes.iter().any(|a| a == &field.name) {
            return 0;
        }
        let len = word.chars().filter(|c| c.is_alphanumeric()).count();
        if self.disable_on_numbers && len > 0 && word.chars().filter(|c| c.is_alphanumeric()).all(|c| c.is_ascii_digit()) {
            return 0;
        }
        if !self.disable_on_words.is_empty() && normalize(word).iter().any(|w| self.disable_on_words.contains(w)) {
            return 0;
        }
        let by_length = if len >= usize::from(self.two_typos) {
            2
        } else if len >= usize::from(self.one_typo) {
            1
        } else {
            0
        };
        by_length.min(field.fuzzy.unwrap_or(2))
    }
}

/// The words of `text`, lowercased and without accents.
pub fn normalize(text: &str) -> Vec<String> {
    let mut analyzer = TextAnalyzer::builder(SimpleTokenizer::default()).filter(LowerCaser).filter(AsciiFoldingFilter).build();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// `normalize`, joined by single spaces (the form of synonym keys and stop words).
pub fn normalized(text: &str) -> String {
    normalize(text).join(" ")
}

impl Relevance {
    /// The longest synonym key, in words (how far a query is looked at from each word).
    pub fn longest_key(&self) -> usize {
        self.synonyms.keys().map(|k| k.split(' ').count()).max().unwrap_or(0)
    }

    /// Whether a query word (as typed) is a stop word.
    pub fn is_stop_word(&self, word: &str) -> bool {
        !self.stop_words.is_empty() && {
            let n = normalized(word);
            !n.is_empty() && self.stop_words.contains(&n)
        }
    }

    /// What `deriver validate` prints about a target's relevance, one line each.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.typo_tolerance;
        out.push(if t.enabled {
            let mut s = format!("typo tolerance: 1 typo from {} letters, 2 from {}", t.one_typo, t.two_typos);
            if !t.disable_on_attributes.is_empty() {
                s.push_str(&format!("; exact on {}", t.disable_on_attributes.join(", ")));
            }
            if !t.disable_on_words.is_empty() {
                s.push_str(&format!("; exact words {}", t.disable_on_words.iter().cloned().collect::<Vec<_>>().join(", ")));
            }
            if t.disable_on_numbers {
                s.push_str("; numbers exact");
            }
            s
        } else {
            "typo tolerance: off".to_string()
        });
        out.push(format!("prefix search: {}", if self.prefix_search == PrefixSearch::LastWord { "last word" } else { "off" }));
        if !self.synonyms.is_empty() {
            let list: Vec<String> = self.synonyms.iter().map(|(k, v)| format!("{k} → {}", v.join(" | "))).collect();
            out.push(format!("synonyms: {}", list.join("; ")));
        }
        if !self.stop_words.is_empty() {
            out.push(format!("stop words: {}", self.stop_words.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        if let Some(d) = &self.distinct {
            out.push(format!("distinct: {d}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_field(name: &str, fuzzy: Option<u8>) -> SearchField {
        SearchField {
            name: name.into(),
            ty: SearchType::Text,
            analyzer: "default".into(),
            stored: true,
            facet: false,
            filterable: false,
            sortable: false,
            boost: 1.0,
            highlight: false,
            fuzzy,
        }
    }

    #[test]
    fn typos_follow_word_length_and_field_caps() {
        let t = TypoTolerance::default();
        let title = text_field("title", None);
        assert_eq!(t.typos(&title, "tow"), 0);
        assert_eq!(t.typos(&title, "sevn"), 0);
        assert_eq!(t.typos(&title, "sevem"), 1);
        assert_eq!(t.typos(&title, "dinosaurr"), 2);
        assert_eq!(t.typos(&title, "éééééééé"), 1, "characters, not bytes");
        assert_eq!(t.typos(&text_field("title", Some(1)), "dinosaurr"), 1, "fuzzy caps");
        assert_eq!(t.typos(&text_field("title", Some(0)), "dinosaurr"), 0, "fuzzy: 0 is exact");
        let custom = TypoTolerance {
            one_typo: 3,
            two_typos: 4,
            disable_on_attributes: vec!["sku".into()],
            disable_on_words: ["robot".to_string()].into(),
            disable_on_numbers: true,
            ..TypoTolerance::default()
        };
        assert_eq!(custom.typos(&title, "abc"), 1);
        assert_eq!(custom.typos(&title, "abcd"), 2);
        assert_eq!(custom.typos(&text_field("sku", None), "abcdefghij"), 0);
        assert_eq!(custom.typos(&title, "robot"), 0);
        assert_eq!(custom.typos(&title, "12345"), 0);
        let off = TypoTolerance { enabled: false, ..TypoTolerance::default() };
        assert_eq!(off.typos(&title, "dinosaurr"), 0);
    }

    #[test]
    fn words_are_normalized_like_meilisearch() {
        assert_eq!(normalize("Résumé  CV"), vec!["resume", "cv"]);
        assert_eq!(normalized("San  Francisco!"), "san francisco");
        let r = Relevance { stop_words: ["the".to_string()].into(), ..Relevance::default() };
        assert!(r.is_stop_word("The"));
        assert!(!r.is_stop_word("then"));
        assert!(!r.is_stop_word("--"));
    }

    #[test]
    fn summaries_name_every_setting() {
        let r = Relevance {
            synonyms: [("sf".to_string(), vec!["san francisco".to_string()])].into(),
            stop_words: ["a".to_string(), "the".to_string()].into(),
            prefix_search: PrefixSearch::Off,
            typo_tolerance: TypoTolerance { disable_on_attributes: vec!["sku".into()], ..TypoTolerance::default() },
            distinct: Some("family".into()),
        };
        assert_eq!(
            r.summary(),
            vec![
                "typo tolerance: 1 typo from 5 letters, 2 from 9; exact on sku",
                "prefix search: off",
                "synonyms: sf → san francisco",
                "stop words: a, the",
                "distinct: family",
            ]
        );
        assert_eq!(Relevance::default().summary(), vec!["typo tolerance: 1 typo from 5 letters, 2 from 9", "prefix search: last word"]);
    }
}
