//! A record's Redis views: each target's key template rendered from the record's fields, and the
//! value it writes there (`json`, `hash`, `set` member, `zset` member and score).

use serde_json::Value;

use crate::pipeline::{Pipeline, RedisTarget, RedisType};
use crate::sink::provenance::Stamp;
use crate::sink::Record;

/// One Redis write a record makes: `json` [text], `hash` [field, value, …], `set` [member],
/// `zset` [member, score].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewWrite {
    pub key: String,
    pub kind: &'static str,
    pub values: Vec<String>,
    /// Its target has `provenance: true`: the view carries `_lsn` and `_version` (in `values`
    /// when rendered with a stamp; in Redis in any case), which comparisons leave out as told.
    pub provenance: bool,
}

/// The Redis writes one record makes under a pipeline's targets (what `deriver preview` shows,
/// without the `_lsn`/`_version` of targets with provenance: those come with a batch);
/// `prefix` is the pipeline's [`Keys::views`].
pub fn preview(prefix: &str, pipeline: &Pipeline, record: &Record) -> std::result::Result<Vec<ViewWrite>, String> {
    render_views(prefix, &build_views(pipeline), record, usize::MAX, None)
}

/// The views each record produces, like [`preview`], with the pipeline's view definitions built
/// once: for callers that render many records (audits read exactly these views back, leaving out
/// `_lsn` and `_version`). `prefix` is the pipeline's [`Keys::views`].
pub fn view_renderer(prefix: &str, pipeline: &Pipeline) -> impl Fn(&Record) -> std::result::Result<Vec<ViewWrite>, String> + Send + Sync {
    let prefix = prefix.to_string();
    let views = build_views(pipeline);
    move |record| render_views(&prefix, &views, record, usize::MAX, None)
}

pub(super) fn build_views(pipeline: &Pipeline) -> Vec<View> {
    let text_fields = pipeline.text_fields();
    let pos = |f: &str| text_fields.iter().position(|x| x == f);
    pipeline
        .redis
        .iter()
        .map(|t| View {
            target: t.clone(),
            field_pos: t.key.fields().map(|f| (f.to_string(), pos(f).expect("template fields are text fields"))).collect(),
            member_pos: t.member.as_deref().and_then(pos),
            score_pos: t.score.as_deref().and_then(pos),
        })
        .collect()
}

/// Renders a record's views; `stamp`: the batch's provenance, added to the views of targets with
/// `provenance: true` (`None`: left out, for previews and audits).
pub(super) fn render_views(
    prefix: &str,
    views: &[View],
    record: &Record,
    max_value: usize,
    stamp: Option<&Stamp>,
) -> std::result::Result<Vec<ViewWrite>, String> {
    let text = |p: Option<usize>| p.and_then(|p| record.texts.get(p).cloned().flatten());
    let mut out = Vec::new();
    for view in views {
        let Some(rendered) = view.target.key.render(|f| text(view.field_pos.iter().find(|(name, _)| name == f).map(|(_, p)| *p))) else {
            // A NULL field in the template: this record has no key for this view.
            continue;
        };
        if rendered.starts_with('_') {
            return Err(format!("the key `{rendered}` would fall among deriver's bookkeeping keys (`{prefix}:_…`)"));
        }
        let key = format!("{prefix}:{rendered}");
        let fields: Vec<(&String, &Value)> = match &view.target.fields {
            None => record.value.iter().collect(),
            Some(list) => list.iter().filter_map(|f| record.value.get_key_value(f)).collect(),
        };
        let provenance = view.target.provenance;
        let stamp = stamp.filter(|_| provenance);
        let (kind, values) = match view.target.ty {
            RedisType::Json => {
                let payload = if view.target.fields.is_none() {
                    match stamp {
                        Some(s) => s.stamp_json(&record.json),
                        None => record.json.clone(),
                    }
                } else {
                    let obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let text = serde_json::to_string(&obj).expect("JSON serializes");
                    match stamp {
                        Some(s) => s.stamp_json(&text),
                        None => text,
                    }
                };
                if payload.len() > max_value {
                    return Err(format!("the JSON view {key} would be {} bytes (redis.max_value_bytes = {max_value})", payload.len()));
                }
                ("json", vec![payload])
            }
            RedisType::Hash => {
                let mut pairs = Vec::new();
                for (name, value) in fields {
                    let text = match value {
                        Value::Null => continue,
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    pairs.push(name.clone());
                    pairs.push(text);
                }
                if let Some(s) = stamp {
                    pairs.extend(s.hash_pairs());
                }
                if let Some(big) = pairs.iter().find(|v| v.len() > max_value) {
                    return Err(format!("a field of the hash view {key} would be {} bytes (redis.max_value_bytes = {max_value})", big.len()));
                }
                ("hash", pairs)
            }
            RedisType::Set => {
                // A NULL member: this record contributes nothing to the view.
                let Some(member) = text(view.member_pos) else { continue };
                ("set", vec![member])
            }
            RedisType::Zset => {
                let (Some(member), Some(score)) = (text(view.member_pos), text(view.score_pos)) else { continue };
                if !score.trim().parse::<f64>().is_ok_and(|f| !f.is_nan()) {
                    return Err(format!("zset score `{score}` for {key} is not a number"));
                }
                ("zset", vec![member, score])
            }
        };
        out.push(ViewWrite { key, kind, values, provenance });
    }
    Ok(out)
}

pub(super) struct View {
    pub(super) target: RedisTarget,
    /// Positions of the template's fields in `Pipeline::text_fields()`.
    field_pos: Vec<(String, usize)>,
    /// set/zset: positions of the member and score fields in `Pipeline::text_fields()`.
    member_pos: Option<usize>,
    score_pos: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::check::check;

    fn pipeline(provenance: &str) -> Pipeline {
        let yaml = format!(
            "version: 1\npipeline: films\nsource: {{ table: film }}\nfields: {{ film_id: film.film_id, title: film.title, rate: film.rate }}\ntargets:\n  - redis: {{ key: \"film:{{film_id}}\"{provenance} }}\n  - redis: {{ key: \"film:{{film_id}}:s\", type: hash, fields: [title, rate]{provenance} }}\n  - redis: {{ key: \"film:{{film_id}}:t\", fields: [title]{provenance} }}\n  - redis: {{ key: \"rated:{{rate}}\", type: set, member: film_id }}\n"
        );
        check(std::path::Path::new("films.yaml"), &yaml).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn record(p: &Pipeline) -> Record {
        let json = r#"{"film_id":7,"title":"Alpha","rate":2.99}"#.to_string();
        let value: serde_json::Map<String, Value> = serde_json::from_str(&json).unwrap();
        let texts = p.text_fields().iter().map(|f| value.get(f).map(|v| v.to_string().trim_matches('"').to_string())).collect();
        Record { key: "7".into(), json, value, texts }
    }

    #[test]
    fn views_of_targets_with_provenance_carry_the_batch_stamp() {
        let p = pipeline(", provenance: true");
        let stamp = Stamp::new("0/16B3748".parse().unwrap(), &p.redis_hash());
        let v = &p.redis_hash()[..12];
        let views = render_views("pre", &build_views(&p), &record(&p), usize::MAX, Some(&stamp)).unwrap();
        assert_eq!(views[0].values, vec![format!(r#"{{"film_id":7,"title":"Alpha","rate":2.99,"_lsn":"0/16B3748","_version":"{v}"}}"#)]);
        assert_eq!(views[1].values, vec!["title", "Alpha", "rate", "2.99", "_lsn", "0/16B3748", "_version", v]);
        assert_eq!(views[2].values, vec![format!(r#"{{"title":"Alpha","_lsn":"0/16B3748","_version":"{v}"}}"#)]);
        assert_eq!(views[3].values, vec!["7"], "a set member carries no stamp");
        assert_eq!(views.iter().map(|w| w.provenance).collect::<Vec<_>>(), vec![true, true, true, false]);
        // Without a stamp (preview, audit): the values alone, still marked.
        let bare = render_views("pre", &build_views(&p), &record(&p), usize::MAX, None).unwrap();
        assert_eq!(bare[0].values, vec![r#"{"film_id":7,"title":"Alpha","rate":2.99}"#.to_string()]);
        assert!(bare[1].provenance);
        // The stamp counts toward the size limit.
        let plain_len = bare[0].values[0].len();
        assert!(render_views("pre", &build_views(&p), &record(&p), plain_len, Some(&stamp)).is_err());
    }

    #[test]
    fn targets_without_provenance_ignore_the_stamp() {
        let p = pipeline("");
        let stamp = Stamp::new("0/1".parse().unwrap(), &p.redis_hash());
        let views = render_views("pre", &build_views(&p), &record(&p), usize::MAX, Some(&stamp)).unwrap();
        assert_eq!(views[0].values, vec![r#"{"film_id":7,"title":"Alpha","rate":2.99}"#.to_string()]);
        assert_eq!(views[1].values, vec!["title", "Alpha", "rate", "2.99"]);
        assert!(views.iter().all(|w| !w.provenance));
    }
}
