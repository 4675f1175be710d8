//! How much an export would become once decoded, read off its bytes
//! before anything is allocated for it. An 8 MiB body of empty spans (two
//! bytes each on the wire, some hundred bytes each decoded) would take
//! gigabytes: such an export is refused by its count of items — spans,
//! events, links, attributes and nested values — not after decoding.

use prost::encoding::{WireType, decode_key, decode_varint};

/// Items one export may hold (a normal batch: hundreds of spans with tens
/// of attributes each). Each costs at most a few hundred bytes decoded, so
/// with `MAX_CONCURRENT_EXPORTS` decoding at once, decoded exports stay
/// within a few hundred MiB.
pub const MAX_ITEMS_PER_EXPORT: usize = 250_000;

/// Why an export's shape is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error("the export holds more than {max} spans, events, links and attributes")]
    TooManyItems { max: usize },
    #[error("the export holds more than {max} spans")]
    TooManySpans { max: usize },
    #[error("the export is not valid protobuf: {0}")]
    Malformed(String),
}

/// Which message a length-delimited field holds, for the nesting OTLP
/// traces use; fields not listed are skipped (strings, bytes, ids).
#[derive(Clone, Copy)]
enum Msg {
    Export,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl Msg {
    /// The message field `field` of this one holds, if it is a counted one.
    fn child(self, field: u32) -> Option<Msg> {
        use Msg::*;
        Some(match (self, field) {
            (Export, 1) => ResourceSpans,
            (ResourceSpans, 1) => Resource,
            (ResourceSpans, 2) => ScopeSpans,
            (Resource, 1) => KeyValue,
            (ScopeSpans, 1) => Scope,
            (ScopeSpans, 2) => Span,
            (Scope, 3) => KeyValue,
            (Span, 9) => KeyValue,
            (Span, 11) => Event,
            (Span, 13) => Link,
            (Event, 3) => KeyValue,
            (Link, 4) => KeyValue,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => ArrayValue,
            (AnyValue, 6) => KeyValueList,
            (ArrayValue, 1) => AnyValue,
            (KeyValueList, 1) => KeyValue,
            _ => return None,
        })
    }
}

/// Counts the items of a protobuf `ExportTraceServiceRequest`, refusing
/// past `max` items or `crate::MAX_SPANS_PER_EXPORT` spans; reads the
/// bytes once, allocating nothing per item.
pub fn check_protobuf(bytes: &[u8], max: usize) -> Result<usize, ShapeError> {
    let mut items = 0usize;
    let mut spans = 0usize;
    // An explicit stack: nesting is attacker-chosen, recursion is not.
    let mut stack: Vec<(Msg, &[u8])> = vec![(Msg::Export, bytes)];
    while let Some((msg, mut buf)) = stack.pop() {
        while !buf.is_empty() {
            let (field, wire) =
                decode_key(&mut buf).map_err(|e| ShapeError::Malformed(e.to_string()))?;
            match wire {
                WireType::Varint => {
                    decode_varint(&mut buf).map_err(|e| ShapeError::Malformed(e.to_string()))?;
                }
                WireType::SixtyFourBit => buf = skip(buf, 8)?,
                WireType::ThirtyTwoBit => buf = skip(buf, 4)?,
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut buf)
                        .map_err(|e| ShapeError::Malformed(e.to_string()))?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= buf.len())
                        .ok_or_else(|| ShapeError::Malformed("a length past the end".into()))?;
                    let (inner, rest) = buf.split_at(len);
                    buf = rest;
                    if let Some(child) = msg.child(field) {
                        items += 1;
                        if items > max {
                            return Err(ShapeError::TooManyItems { max });
                        }
                        if matches!(child, Msg::Span) {
                            spans += 1;
                            if spans > crate::MAX_SPANS_PER_EXPORT {
                                return Err(ShapeError::TooManySpans {
                                    max: crate::MAX_SPANS_PER_EXPORT,
                                });
                            }
                        }
                        stack.push((child, inner));
                    }
                }
                WireType::StartGroup | WireType::EndGroup => {
                    return Err(ShapeError::Malformed("groups are not used by OTLP".into()));
                }
            }
        }
    }
    Ok(items)
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], ShapeError> {
    buf.get(n..)
        .ok_or_else(|| ShapeError::Malformed("a fixed-width value past the end".into()))
}

/// Counts every JSON value of an OTLP/JSON export (objects, arrays and
/// scalars alike: each item is at least one), refusing past `max`,
/// without building any of them.
pub fn check_json(bytes: &[u8], max: usize) -> Result<usize, ShapeError> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut counter = Counter { n: 0, max };
    match (&mut de).deserialize_any(CountVisitor(&mut counter)) {
        Ok(()) => Ok(counter.n),
        Err(_) if counter.n > max => Err(ShapeError::TooManyItems { max }),
        Err(e) => Err(ShapeError::Malformed(e.to_string())),
    }
}

struct Counter {
    n: usize,
    max: usize,
}

struct CountVisitor<'a>(&'a mut Counter);

impl CountVisitor<'_> {
    fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.0.n += 1;
        if self.0.n > self.0.max {
            return Err(E::custom("too many values"));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountVisitor<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        while seq.next_element_seed(CountVisitor(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.count()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(CountVisitor(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value},
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message as _;

    fn kv(v: Value) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_what_decoding_would_build() {
        let span = Span {
            attributes: vec![
                kv(Value::StringValue("a".into())),
                kv(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::IntValue(1)),
                    }],
                })),
            ],
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // resource spans, scope spans, 2 spans, each with 2 key-values, 2
        // any-values, an array and its one value.
        let n = check_protobuf(&req.encode_to_vec(), 100).expect("counted");
        assert_eq!(n, 2 + 2 * (1 + 2 + 2 + 1 + 1));
        assert_eq!(
            check_protobuf(&req.encode_to_vec(), 5),
            Err(ShapeError::TooManyItems { max: 5 })
        );
        assert!(matches!(
            check_protobuf(&[0x0a, 0xff, 0xff, 0x01], 10),
            Err(ShapeError::Malformed(_))
        ));
        assert_eq!(check_protobuf(&[], 10), Ok(0));
    }

    #[test]
    fn a_bomb_of_empty_spans_is_refused_on_its_bytes() {
        // Four million empty spans in one scope: 8 MiB on the wire.
        let mut scope = Vec::with_capacity(8 << 20);
        for _ in 0..(4 << 20) {
            scope.extend([0x12, 0x00]);
        }
        let mut body = Vec::new();
        let wrap = |field: u8, inner: &[u8], out: &mut Vec<u8>| {
            out.push(field);
            prost::encoding::encode_varint(inner.len() as u64, out);
            out.extend_from_slice(inner);
        };
        let mut rs = Vec::new();
        wrap(0x12, &scope, &mut rs);
        wrap(0x0a, &rs, &mut body);
        assert_eq!(
            check_protobuf(&body, usize::MAX),
            Err(ShapeError::TooManySpans {
                max: crate::MAX_SPANS_PER_EXPORT
            }),
            "spans are counted before decoding too"
        );
        // One span with 300 000 empty attributes: too many items.
        let mut span = Vec::new();
        for _ in 0..300_000 {
            span.extend([0x4a, 0x00]);
        }
        let (mut scope, mut rs, mut body) = (Vec::new(), Vec::new(), Vec::new());
        wrap(0x12, &span, &mut scope);
        wrap(0x12, &scope, &mut rs);
        wrap(0x0a, &rs, &mut body);
        assert_eq!(
            check_protobuf(&body, MAX_ITEMS_PER_EXPORT),
            Err(ShapeError::TooManyItems {
                max: MAX_ITEMS_PER_EXPORT
            })
        );
    }

    #[test]
    fn json_values_are_counted_without_building_them() {
        let doc = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},{"name":"x"}]}]}]}"#;
        assert_eq!(check_json(doc, 100), Ok(10));
        assert_eq!(check_json(doc, 5), Err(ShapeError::TooManyItems { max: 5 }));
        assert!(matches!(
            check_json(b"{\"a\":", 100),
            Err(ShapeError::Malformed(_))
        ));
        let bomb = format!("[{}]", vec!["{}"; 200_000].join(","));
        assert_eq!(
            check_json(bomb.as_bytes(), 100_000),
            Err(ShapeError::TooManyItems { max: 100_000 })
        );
    }
}
