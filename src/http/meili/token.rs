//! Tenant tokens, as Meilisearch defines them: a JWT (HS256, HS384 or HS512) signed with the API
//! key, whose claims are `searchRules` (which indexes, each with an optional filter), `apiKeyUid`
//! (the uid of that key) and an optional `exp` (seconds since the epoch). A backend hands each
//! user such a token; every search made with it is restricted to its indexes and filtered by its
//! filter, which the user cannot remove.
//!
//! deriver has one key, `http.token`; its uid ([`key_uid`]) is a UUID derived from it (shown by
//! `GET /keys`). Signatures are checked by `jsonwebtoken`; the header and claims are decoded here
//! because Meilisearch's JS client encodes them with the standard base64 alphabet (`btoa`), which
//! strict JWT decoders refuse, while its signature is base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// No key configured, or the key itself: everything.
    Full,
    /// A tenant token: searches on its indexes, with its filters.
    Tenant(SearchRules),
}

/// The `searchRules` of a tenant token: index patterns (`films`, `films_*`, `*`), each with an
/// optional filter (Meilisearch filter syntax).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRules {
    rules: Vec<(String, Option<Value>)>,
}

impl SearchRules {
    pub fn parse(v: &Value) -> Result<SearchRules, String> {
        let rules = match v {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(|s| (s.to_string(), None)).ok_or_else(|| "`searchRules` must list index names".to_string()))
                .collect::<Result<_, _>>()?,
            Value::Object(obj) => obj
                .iter()
                .map(|(k, rule)| match rule {
                    Value::Null => Ok((k.clone(), None)),
                    Value::Object(o) => match o.get("filter") {
                        None | Some(Value::Null) => Ok((k.clone(), None)),
                        Some(f @ (Value::String(_) | Value::Array(_))) => Ok((k.clone(), Some(f.clone()))),
                        Some(_) => Err(format!("the filter of `{k}` in `searchRules` must be a string or an array")),
                    },
                    _ => Err(format!("the rule of `{k}` in `searchRules` must be null or an object")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("`searchRules` must be an array or an object".into()),
        };
        Ok(SearchRules { rules })
    }

    /// For index `uid`: `None` when the token does not cover it, else the filter it imposes. An
    /// exact rule wins over patterns; of several patterns, the longest.
    pub fn for_index(&self, uid: &str) -> Option<Option<&Value>> {
        if let Some((_, f)) = self.rules.iter().find(|(p, _)| p == uid) {
            return Some(f.as_ref());
        }
        self.rules
            .iter()
            .filter(|(p, _)| p.strip_suffix('*').is_some_and(|prefix| uid.starts_with(prefix)))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, f)| f.as_ref())
    }
}

/// The uid of deriver's one API key: a version-4-shaped UUID made from its SHA-256.
pub fn key_uid(key: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(format!("deriver api key uid:{key}").as_bytes())[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// base64 in either alphabet, padded or not.
fn decode_part(part: &str) -> Option<Value> {
    let text: String = part
        .trim_end_matches('=')
        .chars()
        .map(|c| {
            if c == '+' {
                '-'
            } else if c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `text` looks like a JWT at all (three dot-separated parts), i.e. is meant as a token.
pub fn looks_like_jwt(text: &str) -> bool {
    text.split('.').count() == 3
}

/// Checks a tenant token against the key: its search rules, or why it is refused.
pub fn verify(token: &str, key: &str, now_secs: i64) -> Result<SearchRules, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err("The token is not a JWT.".into()) };
    let header = decode_part(header).ok_or("The token's header is not valid.")?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => Algorithm::HS256,
        Some("HS384") => Algorithm::HS384,
        Some("HS512") => Algorithm::HS512,
        _ => return Err("Tenant tokens must be signed with HS256, HS384 or HS512.".into()),
    };
    let message = &token[..token.len() - signature.len() - 1];
    let signed = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &DecodingKey::from_secret(key.as_bytes()), alg).unwrap_or(false);
    if !signed {
        return Err("The token's signature does not match the API key.".into());
    }
    let claims = decode_part(claims).ok_or("The token's claims are not valid.")?;
    match claims.get("apiKeyUid").and_then(Value::as_str) {
        Some(uid) if uid == key_uid(key) => {}
        Some(_) => return Err("The token's `apiKeyUid` is not the uid of the key that signed it.".into()),
        None => return Err("The token has no `apiKeyUid` claim.".into()),
    }
    match claims.get("exp") {
        None | Some(Value::Null) => {}
        Some(exp) => match exp.as_f64() {
            Some(e) if e > now_secs as f64 => {}
            Some(_) => return Err("The token has expired.".into()),
            None => return Err("The token's `exp` claim is not a number.".into()),
        },
    }
    SearchRules::parse(claims.get("searchRules").ok_or("The token has no `searchRules` claim.")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const KEY: &str = "the-api-key";

    fn token(claims: Value, key: &str, alg: Algorithm) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
    }

    #[test]
    fn accepts_signed_tokens_and_applies_their_rules() {
        let uid = key_uid(KEY);
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_ne!(key_uid("other"), uid);
        let t = token(
            json!({ "searchRules": { "films": { "filter": "rating = PG" }, "f*": null, "*": {} }, "apiKeyUid": uid, "exp": 4_000_000_000u64 }),
            KEY,
            Algorithm::HS256,
        );
        let rules = verify(&t, KEY, 1_700_000_000).unwrap();
        assert_eq!(rules.for_index("films"), Some(Some(&json!("rating = PG"))));
        assert_eq!(rules.for_index("foo"), Some(None));
        assert_eq!(rules.for_index("actors"), Some(None));
        let t = token(json!({ "searchRules": ["films", "act*"], "apiKeyUid": uid }), KEY, Algorithm::HS512);
        let rules = verify(&t, KEY, 1_700_000_000).unwrap();
        assert_eq!((rules.for_index("films"), rules.for_index("actors"), rules.for_index("other")), (Some(None), Some(None), None));
        // The standard base64 alphabet of the JS client's claims.
        let claims = json!({ "searchRules": { "films": { "filter": "rating = 'G>?'" } }, "apiKeyUid": uid });
        let b64 = |v: &Value| base64::engine::general_purpose::STANDARD_NO_PAD.encode(v.to_string());
        let head = b64(&json!({ "alg": "HS256", "typ": "JWT" }));
        let body = b64(&claims);
        let sig = jsonwebtoken::crypto::sign(format!("{head}.{body}").as_bytes(), &EncodingKey::from_secret(KEY.as_bytes()), Algorithm::HS256).unwrap();
        assert!(verify(&format!("{head}.{body}.{sig}"), KEY, 0).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let uid = key_uid(KEY);
        let good = json!({ "searchRules": ["*"], "apiKeyUid": uid });
        for (t, needle) in [
            ("nope".to_string(), "not a JWT"),
            ("a.b.c".to_string(), "header"),
            (token(good.clone(), "another-key", Algorithm::HS256), "signature"),
            (token(json!({ "searchRules": ["*"], "apiKeyUid": uid, "exp": 1_000 }), KEY, Algorithm::HS256), "expired"),
            (token(json!({ "searchRules": ["*"], "apiKeyUid": key_uid("x") }), KEY, Algorithm::HS256), "apiKeyUid"),
            (token(json!({ "searchRules": ["*"] }), KEY, Algorithm::HS256), "apiKeyUid"),
            (token(json!({ "apiKeyUid": uid }), KEY, Algorithm::HS256), "searchRules"),
            (token(json!({ "searchRules": 3, "apiKeyUid": uid }), KEY, Algorithm::HS256), "searchRules"),
            (token(json!({ "searchRules": { "films": { "filter": 3 } }, "apiKeyUid": uid }), KEY, Algorithm::HS256), "filter"),
        ] {
            let e = verify(&t, KEY, 1_700_000_000).expect_err(needle);
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // `alg: none` and a tampered payload.
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!("{}.{}.", b64(&json!({ "alg": "none" })), b64(&good));
        assert!(verify(&unsigned, KEY, 0).unwrap_err().contains("HS256"));
        let t = token(json!({ "searchRules": { "films": { "filter": "tenant = 1" } }, "apiKeyUid": uid }), KEY, Algorithm::HS256);
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(&json!({ "searchRules": ["*"], "apiKeyUid": uid })), parts[2]);
        assert!(verify(&forged, KEY, 0).unwrap_err().contains("signature"));
    }
}
