//! A record's Redis views: each target's key template rendered from the record's fields, and the
//! value it writes there (`json`, `hash`, `set` member, `zset` member and score).

use serde_json::Value;

use crate::pipeline::{Pipeline, RedisTarget, RedisType};
use crate::sink::Record;

/// One Redis write a record makes: `json` [text], `hash` [field, value, …], `set` [member],
/// `zset` [member, score].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewWrite {
    pub key: String,
    pub kind: &'static str,
    pub values: Vec<String>,
}

/// The Redis writes one record makes under a pipeline's targets (what `deriver preview` shows);
/// `prefix` is the pipeline's [`Keys::views`].
pub fn preview(prefix: &str, pipeline: &Pipeline, record: &Record) -> std::result::Result<Vec<ViewWrite>, String> {
    render_views(prefix, &build_views(pipeline), record, usize::MAX)
}

/// The views each record produces, like [`preview`], with the pipeline's view definitions built
/// once: for callers that render many records (audits read exactly these views back). `prefix` is
/// the pipeline's [`Keys::views`].
pub fn view_renderer(prefix: &str, pipeline: &Pipeline) -> impl Fn(&Record) -> std::result::Result<Vec<ViewWrite>, String> + Send + Sync {
    let prefix = prefix.to_string();
    let views = build_views(pipeline);
    move |record| render_views(&prefix, &views, record, usize::MAX)
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

pub(super) fn render_views(prefix: &str, views: &[View], record: &Record, max_value: usize) -> std::result::Result<Vec<ViewWrite>, String> {
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
        let (kind, values) = match view.target.ty {
            RedisType::Json => {
                let payload = if view.target.fields.is_none() {
                    record.json.clone()
                } else {
                    let obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    serde_json::to_string(&obj).expect("JSON serializes")
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
        out.push(ViewWrite { key, kind, values });
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
