//! Provenance (`provenance: true` on a target): the `_lsn` and `_version` every record it writes
//! carries, so that whoever reads a cached value can tell how fresh it is and which definition
//! made it. `_lsn` is the commit LSN (`X/Y`) of the batch that wrote the record; `_version` the
//! first 12 hex digits of the target's own definition hash (the search index's, or the
//! pipeline's Redis views' — the hash stored beside the data as its checkpoint's
//! `definition_hash`).
//!
//! A JSON value is stamped by appending the two keys to the record's JSON text, last, in this
//! order; [`strip_json`] takes them off again, so comparisons (a rewrite's, the audit's) can
//! leave out what they must not compare.

use std::borrow::Cow;

use crate::pipeline::{short_version, LSN_FIELD, VERSION_FIELD};
use crate::source::Lsn;

/// The provenance of one batch's writes to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub lsn: String,
    pub version: String,
}

impl Stamp {
    /// The stamp of a batch at `lsn` for a target built from `definition_hash`.
    pub fn new(lsn: Lsn, definition_hash: &str) -> Stamp {
        Stamp { lsn: lsn.to_string(), version: short_version(definition_hash).to_string() }
    }

    /// `"_lsn":"X/Y","_version":"…"`: the two members as JSON text.
    fn members(&self) -> String {
        // Both values are ASCII without quotes or backslashes (an LSN, hex digits).
        format!(r#""{LSN_FIELD}":"{}","{VERSION_FIELD}":"{}""#, self.lsn, self.version)
    }

    /// A JSON object's text with `_lsn` and `_version` appended as its last members. Anything
    /// but an object (never produced: records are objects) is returned as it is.
    pub fn stamp_json(&self, json: &str) -> String {
        let body = json.trim_end();
        let Some(open) = body.strip_suffix('}') else { return json.to_string() };
        let members = self.members();
        let mut out = String::with_capacity(body.len() + members.len() + 2);
        out.push_str(open);
        if !open.trim_end().ends_with('{') {
            out.push(',');
        }
        out.push_str(&members);
        out.push('}');
        out
    }

    /// The field/value pairs a hash view adds.
    pub fn hash_pairs(&self) -> [String; 4] {
        [LSN_FIELD.to_string(), self.lsn.clone(), VERSION_FIELD.to_string(), self.version.clone()]
    }
}

/// A JSON text without the stamp [`Stamp::stamp_json`] appends: (the text without it, the
/// stamp's `_version`). `None` when the text does not end with a stamp (compare it as it is).
/// Only the exact form deriver writes is recognised: unescaped, last, `_lsn` then `_version`.
pub fn strip_json(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let body = text.strip_suffix("\"}")?;
    let (before_version, version) = body.rsplit_once(&format!(r#","{VERSION_FIELD}":""#))?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (before_lsn, lsn) = before_version.rsplit_once(&format!(r#""{LSN_FIELD}":""#))?;
    let lsn = lsn.strip_suffix('"')?;
    if lsn.parse::<Lsn>().is_err() {
        return None;
    }
    let unstamped = if let Some(rest) = before_lsn.strip_suffix(',') {
        Cow::Owned(format!("{rest}}}"))
    } else if before_lsn.trim_end().ends_with('{') {
        Cow::Owned(format!("{before_lsn}}}"))
    } else {
        return None;
    };
    Some((unstamped, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_appended_and_taken_off_again() {
        let s = Stamp::new("16/B374D848".parse().unwrap(), "0123456789abcdef0123456789abcdef");
        assert_eq!(s.version, "0123456789ab");
        let stamped = s.stamp_json(r#"{"film_id":7,"title":"Alpha"}"#);
        assert_eq!(stamped, r#"{"film_id":7,"title":"Alpha","_lsn":"16/B374D848","_version":"0123456789ab"}"#);
        let v: serde_json::Value = serde_json::from_str(&stamped).unwrap();
        assert_eq!((v["_lsn"].as_str(), v["_version"].as_str()), (Some("16/B374D848"), Some("0123456789ab")));
        let (body, version) = strip_json(&stamped).unwrap();
        assert_eq!((body.as_ref(), version), (r#"{"film_id":7,"title":"Alpha"}"#, "0123456789ab"));
        // An empty object, and Postgres's spacing (`{"a" : 1}`).
        assert_eq!(s.stamp_json("{}"), r#"{"_lsn":"16/B374D848","_version":"0123456789ab"}"#);
        assert_eq!(strip_json(&s.stamp_json("{}")).unwrap().0, "{}");
        let spaced = s.stamp_json(r#"{"a" : 1 }"#);
        assert_eq!(strip_json(&spaced).unwrap().0, r#"{"a" : 1 }"#);
    }

    #[test]
    fn only_the_exact_stamp_is_recognised() {
        assert!(strip_json(r#"{"a":1}"#).is_none());
        assert!(strip_json(r#"{"a":1,"_version":"0123456789ab"}"#).is_none(), "no _lsn");
        assert!(strip_json(r#"{"a":1,"_lsn":"nope","_version":"0123456789ab"}"#).is_none(), "not an LSN");
        assert!(strip_json(r#"{"a":1,"_lsn":"0/1","_version":"xyz"}"#).is_none(), "not hex");
        assert!(strip_json(r#"{"_version":"ab","_lsn":"0/1"}"#).is_none(), "another order");
        // A string value holding the same characters is escaped, so it is no stamp.
        let tricky = serde_json::json!({"a": "\"_lsn\":\"0/1\",\"_version\":\"ab\"}"}).to_string();
        assert!(strip_json(&tricky).is_none(), "{tricky}");
        // A stamp inside a nested object is not the record's.
        assert!(strip_json(r#"{"a":{"_lsn":"0/1","_version":"ab"},"b":1}"#).is_none());
    }

    #[test]
    fn hash_pairs_name_both_fields() {
        let s = Stamp::new(Lsn(0x1_0000_00FF), "abc");
        assert_eq!(s.hash_pairs(), ["_lsn".to_string(), "1/FF".into(), "_version".into(), "abc".into()]);
    }
}
