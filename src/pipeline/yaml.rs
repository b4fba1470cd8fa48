//! A YAML tree where every node knows its line and column, so the pipeline checker can report
//! every problem at once with `file:line:col` instead of stopping at the first serde error.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    // YAML 1.2 booleans only: a field named `n`, `y`, `on` or `no` is a name, not a boolean.
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Node>(text, options) {
        Ok(node) => Ok(node),
        Err(e) => {
            let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() }).unwrap_or(Pos { line: 1, col: 1 });
            // The error's Display carries a snippet; keep only its first line as the message.
            let full = e.to_string();
            let message = full.lines().next().unwrap_or("invalid YAML").to_string();
            Err(SyntaxError { pos, message })
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node { value: spanned.value, pos: Pos { line: spanned.referenced.line(), col: spanned.referenced.column() } })
    }
}

struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(node) = seq.next_element::<Node>()? {
                    items.push(node);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let node = map.next_value::<Node>()?;
                    entries.push((Key { name: key.value.0, pos: Pos { line: key.referenced.line(), col: key.referenced.column() } }, node));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions() {
        let node = parse("a: 1\nb:\n  c: [x, y]\n  d: \"q\"\n").unwrap();
        let Value::Map(entries) = node.value else { panic!("expected a map") };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert!(matches!(entries[0].1.value, Value::Int(1)));
        assert_eq!(entries[1].0.pos.line, 2);
        let Value::Map(inner) = &entries[1].1.value else { panic!("expected a map") };
        assert_eq!(inner[1].0.pos, Pos { line: 4, col: 3 });
        assert_eq!(inner[1].1.pos, Pos { line: 4, col: 6 });
        let Value::Seq(items) = &inner[0].1.value else { panic!("expected a list") };
        assert_eq!(items[1].pos, Pos { line: 3, col: 10 });
    }

    #[test]
    fn yaml11_booleans_are_plain_strings() {
        let node = parse("n: on\ny: true\n").unwrap();
        let Value::Map(entries) = node.value else { panic!("expected a map") };
        assert_eq!(entries[0].0.name, "n");
        assert!(matches!(&entries[0].1.value, Value::Str(s) if s == "on"));
        assert!(matches!(entries[1].1.value, Value::Bool(true)));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        let dup = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(dup.pos.line, 2, "{dup:?}");
    }
}
