//! Bytes → events. Never panics: every input either decodes into an [`Event`] or is
//! rejected with a [`Rejection`] naming the kind of error and a human-readable reason.
//!
//! Decoding reads only the members the dataflow declares, borrowing from the payload, and
//! parses numbers from their JSON text into exact decimals (no `f64` on the way).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::expr::Arg;
use crate::flat_json;
use crate::spec::{Check, CorrelationSource, FieldType, PipelineSpec};

/// Largest magnitude a decimal field may have. Sums of up to 10^10 such values still fit
/// rust_decimal's 96-bit mantissa exactly.
pub const MAX_ABS_DECIMAL: Decimal = Decimal::from_parts(0xA764_0000, 0x0DE0_B6B3, 0, false, 0); // 10^18

/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME_MS: u64 = 253_402_300_799_999;

/// Why a record was refused. Stable names: they are written to the dead-letter topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The payload is empty (or null).
    EmptyPayload,
    /// The payload exceeds `max_payload_bytes`.
    PayloadTooLarge,
    /// The payload is not UTF-8.
    NotUtf8,
    /// The payload is not JSON.
    MalformedJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field has the right type but an unusable value (bad date, out of range).
    InvalidValue,
    /// A validation rule failed.
    RuleViolation,
    /// A valid record repeating an earlier one's id within the dedupe horizon.
    Duplicate,
}

impl ErrorKind {
    /// The name written to dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::EmptyPayload => "empty_payload",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::NotUtf8 => "not_utf8",
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::NotAnObject => "not_an_object",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::RuleViolation => "rule_violation",
            ErrorKind::Duplicate => "duplicate",
        }
    }
}

/// A refused record's error: what kind, and why in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The kind of error.
    pub kind: ErrorKind,
    /// A sentence for the person reading the dead letter.
    pub reason: String,
    /// The record's correlation id, when one was found (`[input] correlation_id`): from
    /// its header, or from its field once the payload was read as a JSON object. Its dead
    /// letter carries it.
    pub correlation_id: Option<String>,
}

impl Rejection {
    /// A rejection of `kind`, without a correlation id.
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
            correlation_id: None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}

/// A decoded, validated event: what the windows need of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time, epoch milliseconds.
    pub time: u64,
    /// Grouping key.
    pub key: String,
    /// Event id, kept only in a dataflow with `[enrich]`, whose missing-reference dead
    /// letters name it; empty otherwise (dedupe reads it from [`Decoded::id`]).
    pub id: String,
    /// Values of the dataflow's numeric fields, in `PipelineSpec::numeric_fields` order,
    /// for `[enrich]` to compute window values from after the join; empty in a dataflow
    /// without `[enrich]`, where `windows` already holds every value a window takes.
    pub values: Vec<Decimal>,
    /// Per window, in `PipelineSpec::windows` order: the event's group and value there,
    /// or `None` when a filter keeps it out of that window.
    /// Inline for one window (most dataflows): no allocation per event, and no free on
    /// the worker the event is exchanged to.
    pub windows: SmallVec<[Option<Grouped>; 1]>,
    /// The correlation id the outputs of this event carry (`[input] correlation_id`), if
    /// it has one.
    pub correlation_id: Option<String>,
    /// The Kafka timestamp of its record (epoch ms, 0 unknown), for the `since="append"`
    /// latency; no part of any output.
    #[serde(default)]
    pub appended_ms: u64,
}

/// What one window takes from an event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grouped {
    /// The group key ([`group_key`]); `None` when it is the event's key (the window groups
    /// by the input's key field alone, the usual case), which is then not stored twice.
    pub key: Option<String>,
    /// The aggregated value (zero when the window aggregates none).
    pub value: Decimal,
}

/// What one window takes from an event, as [`Event::window`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group<'a> {
    /// The group key ([`group_key`]).
    pub key: &'a str,
    /// The aggregated value (zero when the window aggregates none).
    pub value: Decimal,
}

impl Event {
    /// What window `index` takes from this event, or `None` when it is filtered out.
    pub fn window(&self, index: usize) -> Option<Group<'_>> {
        let g = self.windows.get(index)?.as_ref()?;
        Some(Group {
            key: g.key.as_deref().unwrap_or(&self.key),
            value: g.value,
        })
    }
}

/// A decoded record: its event, and its id borrowed from the payload (only dedupe needs
/// it, so it is not copied into the event).
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The event.
    pub event: Event,
    /// The value of the input's id field.
    pub id: Cow<'a, str>,
}

/// The group key of a window result, from the values of its `group_by` fields in order,
/// each as text (strings as they are, numbers as written in decimal notation without
/// trailing zeros, booleans as `true`/`false`, timestamps as epoch milliseconds).
///
/// - no fields (one global group): the empty string;
/// - one field: its value, unchanged, so grouping by the input's key field gives that key;
/// - several: the values joined by `|`, each with `\` written `\\` and `|` written
///   `\|`, so that no two different tuples share a key (`a|b` + `c` is `a\|b|c`,
///   `a` + `b|c` is `a|b\|c`).
pub fn group_key(parts: &[&str]) -> String {
    match parts {
        [] => String::new(),
        [one] => (*one).to_string(),
        many => {
            let mut key = String::new();
            for (i, p) in many.iter().enumerate() {
                if i > 0 {
                    key.push('|');
                }
                for c in p.chars() {
                    if c == '\\' || c == '|' {
                        key.push('\\');
                    }
                    key.push(c);
                }
            }
            key
        }
    }
}

/// A value read from a declared field.
#[derive(Clone, Debug, PartialEq)]
enum FieldValue<'a> {
    Str(Cow<'a, str>),
    Dec(Decimal),
    Int(i64),
    Bool(bool),
    Time(u64),
}

/// The object's members the dataflow declares, borrowed from the payload.
struct Slots<'s> {
    names: &'s [String],
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The members read from one payload (their values' JSON text), in [`Decoder`]'s `names`
/// order. On the stack for dataflows of up to 8 fields.
type SlotValues<'de> = SmallVec<[Option<&'de str>; 8]>;

impl<'de> DeserializeSeed<'de> for Slots<'_> {
    type Value = SlotValues<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Slots<'_> {
    type Value = SlotValues<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots: SlotValues<'de> = smallvec::smallvec![None; self.names.len()];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.names.iter().position(|n| *n == key.0) {
                Some(i) => slots[i] = Some(map.next_value::<&'de RawValue>()?.get()),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
    }
}

/// Decodes and validates records for one dataflow.
pub struct Decoder {
    /// The members read: the declared fields (as many as `types`), then the correlation
    /// field when it is not one of them.
    names: flat_json::Names,
    types: Vec<FieldType>,
    /// Which of `names` holds the correlation id, when it comes from a field.
    correlation: Option<usize>,
    spec: PipelineSpec,
}

impl Decoder {
    /// A decoder for `spec`'s input.
    pub fn new(spec: &PipelineSpec) -> Self {
        let mut names: Vec<String> = spec
            .validation
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let correlation = match spec.input.correlation.as_ref().map(|c| &c.source) {
            Some(CorrelationSource::Field(field)) => {
                Some(names.iter().position(|n| n == field).unwrap_or_else(|| {
                    names.push(field.clone());
                    names.len() - 1
                }))
            }
            Some(CorrelationSource::Header(_)) | None => None,
        };
        Decoder {
            names: flat_json::Names::new(names),
            types: spec.validation.fields.iter().map(|f| f.ty).collect(),
            correlation,
            spec: spec.clone(),
        }
    }

    /// Decodes one payload (`None` for a Kafka null value).
    pub fn decode(&self, payload: Option<&[u8]>) -> Result<Event, Rejection> {
        self.decode_record(payload).map(|d| d.event)
    }

    /// Decodes one payload (`None` for a Kafka null value), with its id.
    pub fn decode_record<'a>(&self, payload: Option<&'a [u8]>) -> Result<Decoded<'a>, Rejection> {
        let mut event = Event::default();
        let id = self.decode_into(payload, &mut event)?;
        Ok(Decoded { event, id })
    }

    /// Decodes one payload (`None` for a Kafka null value) into `event`, reusing its
    /// buffers, and returns its id. After a rejection `event` holds nothing meaningful.
    ///
    /// The source decodes every record into one event this way: a dataflow whose windows
    /// all combine in the source never allocates per event.
    pub fn decode_into<'a>(
        &self,
        payload: Option<&'a [u8]>,
        event: &mut Event,
    ) -> Result<Cow<'a, str>, Rejection> {
        let bytes = payload.unwrap_or_default();
        if bytes.is_empty() {
            return Err(Rejection::new(
                ErrorKind::EmptyPayload,
                "the record has no payload",
            ));
        }
        let limit = self.spec.validation.max_payload_bytes;
        if bytes.len() > limit {
            return Err(Rejection::new(
                ErrorKind::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {limit}", bytes.len()),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Rejection::new(ErrorKind::NotUtf8, format!("payload is not UTF-8: {e}"))
        })?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            // Tell "not JSON at all" from "JSON, but not an object".
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => {
                    Rejection::new(ErrorKind::NotAnObject, "payload is JSON but not an object")
                }
                Err(e) => Rejection::new(
                    ErrorKind::MalformedJson,
                    format!("payload is not valid JSON: {e}"),
                ),
            });
        }
        let mut slots: SlotValues<'_> = smallvec::smallvec![None; self.names.as_slice().len()];
        let read = {
            let slots = slots.as_mut_slice();
            flat_json::members(text, &self.names, |i, raw| slots[i] = Some(raw))
        };
        // The one-pass read reads only strings without escapes.
        let plain = read.is_some();
        if !plain {
            // Not a flat object of plain values: serde_json reads it, or words the error.
            let mut de = serde_json::Deserializer::from_str(text);
            slots = Slots {
                names: self.names.as_slice(),
            }
            .deserialize(&mut de)
            .and_then(|s| de.end().map(|_| s))
            .map_err(|e| {
                Rejection::new(
                    ErrorKind::MalformedJson,
                    format!("payload is not valid JSON: {e}"),
                )
            })?;
        }
        let correlation_id = self
            .correlation
            .and_then(|i| slots[i])
            .and_then(correlation_text);
        match self.event_of(&slots[..self.types.len()], plain, event) {
            Ok(id) => {
                event.correlation_id = correlation_id;
                Ok(id)
            }
            Err(mut rejection) => {
                rejection.correlation_id = correlation_id;
                Err(rejection)
            }
        }
    }

    /// Validates the declared fields' values (`slots`, in declaration order) into `event`,
    /// and returns the id; `plain`: no string among them has an escape.
    fn event_of<'a>(
        &self,
        slots: &[Option<&'a str>],
        plain: bool,
        event: &mut Event,
    ) -> Result<Cow<'a, str>, Rejection> {
        let mut values: SmallVec<[FieldValue<'a>; 8]> = SmallVec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let name = &self.names.as_slice()[i];
            let raw = match slot {
                Some(raw) if *raw != "null" => raw,
                Some(_) => {
                    return Err(Rejection::new(
                        ErrorKind::MissingField,
                        format!("field `{name}` is null"),
                    ));
                }
                None => {
                    return Err(Rejection::new(
                        ErrorKind::MissingField,
                        format!("field `{name}` is missing"),
                    ));
                }
            };
            values.push(read_value(name, self.types[i], raw, plain)?);
        }

        let arg = |i: usize| -> Arg<'_> {
            match &values[i] {
                FieldValue::Str(s) => Arg::Str(s),
                FieldValue::Dec(d) => Arg::Decimal(*d),
                FieldValue::Int(n) => Arg::Int(*n),
                FieldValue::Bool(b) => Arg::Bool(*b),
                FieldValue::Time(t) => Arg::Time(*t),
            }
        };
        for rule in &self.spec.validation.rules {
            let Some(field) = rule.field else {
                let Check::Expr(e) = &rule.check else {
                    unreachable!("only expression rules have no field")
                };
                let why = match e.test(&arg) {
                    Ok(true) => continue,
                    Ok(false) => rule
                        .reason
                        .clone()
                        .unwrap_or_else(|| "is false".to_string()),
                    Err(err) => format!("cannot be evaluated: {err}"),
                };
                return Err(Rejection::new(
                    ErrorKind::RuleViolation,
                    format!("{} (`{}`): {why}", rule.name, e.source()),
                ));
            };
            let name = &self.names.as_slice()[field];
            let value = &values[field];
            let ok = match (&rule.check, value) {
                (Check::Compare(cmp, bound), FieldValue::Dec(d)) => cmp.holds(*d, *bound),
                (Check::Compare(cmp, bound), FieldValue::Int(i)) => {
                    cmp.holds(Decimal::from(*i), *bound)
                }
                (Check::OneOf(allowed), FieldValue::Str(s)) => allowed.iter().any(|a| a == s),
                (Check::Pattern(re), FieldValue::Str(s)) => re.is_match(s),
                _ => false,
            };
            if !ok {
                if let Some(reason) = &rule.reason {
                    return Err(Rejection::new(
                        ErrorKind::RuleViolation,
                        format!("{}: {reason}", rule.name),
                    ));
                }
                let shown = show(value);
                let reason = match &rule.check {
                    Check::Compare(cmp, bound) => {
                        format!("`{name}` must be {} {bound}, got {shown}", cmp.symbol())
                    }
                    Check::OneOf(allowed) => {
                        format!("`{name}` must be one of {allowed:?}, got {shown}")
                    }
                    Check::Pattern(re) => {
                        format!("`{name}` must match /{}/, got {shown}", re.as_str())
                    }
                    Check::Expr(e) => format!("{} (`{}`) is false", rule.name, e.source()),
                };
                return Err(Rejection::new(ErrorKind::RuleViolation, reason));
            }
        }

        let input = &self.spec.input;
        let time = match values[input.time_field] {
            FieldValue::Time(t) => t,
            _ => unreachable!("the event-time field is declared as a timestamp"),
        };
        let id = match &values[input.id_field] {
            FieldValue::Str(s) => s.clone(),
            other => Cow::Owned(as_text(other).into_owned()),
        };
        let numbers: SmallVec<[Decimal; 8]> = self
            .spec
            .numeric_fields
            .iter()
            .map(|&f| match values[f] {
                FieldValue::Dec(d) => d,
                FieldValue::Int(i) => Decimal::from(i),
                _ => Decimal::ZERO,
            })
            .collect();

        let admitted = match &self.spec.input.filter {
            None => true,
            Some(f) => f.test(&arg).map_err(|err| {
                Rejection::new(
                    ErrorKind::RuleViolation,
                    format!("input.filter (`{}`) cannot be evaluated: {err}", f.source()),
                )
            })?,
        };
        event.windows.clear();
        for (i, w) in self.spec.windows.iter().enumerate() {
            let failed = |what: &str, src: &str, err: crate::expr::EvalError| {
                Rejection::new(
                    ErrorKind::RuleViolation,
                    format!("windows[{i}].{what} (`{src}`) cannot be evaluated: {err}"),
                )
            };
            let counted = admitted
                && match &w.filter {
                    None => true,
                    Some(f) => f.test(&arg).map_err(|e| failed("filter", f.source(), e))?,
                };
            if !counted {
                event.windows.push(None);
                continue;
            }
            let value = match (&w.value_expr, w.value) {
                (Some(e), _) => e
                    .number(&arg)
                    .map_err(|err| failed("value", e.source(), err))?,
                (None, Some(j)) => numbers_at(&numbers, j),
                (None, None) => Decimal::ZERO,
            };
            let key = if w.group_by.len() == 1 && w.group_by[0] == input.key_field {
                None
            } else {
                let parts: Vec<Cow<'_, str>> =
                    w.group_by.iter().map(|&f| as_text(&values[f])).collect();
                let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
                Some(group_key(&parts))
            };
            event.windows.push(Some(Grouped { key, value }));
        }
        event.time = time;
        event.key.clear();
        event.key.push_str(&as_text(&values[input.key_field]));
        event.id.clear();
        event.values.clear();
        if self.spec.enrich.is_some() {
            event.id.push_str(&id);
            event.values.extend_from_slice(&numbers);
        }
        event.correlation_id = None;
        event.appended_ms = 0;
        Ok(id)
    }
}

/// A correlation id as read from its member: a string's text, or a number as written;
/// nothing for an empty string or any other JSON value.
fn correlation_text(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        json_string("correlation_id", raw, false)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Cow::into_owned)
    } else if is_number(raw) {
        Some(raw.to_string())
    } else {
        None
    }
}

fn numbers_at(numbers: &[Decimal], j: usize) -> Decimal {
    numbers.get(j).copied().unwrap_or_default()
}

fn as_text<'v>(v: &'v FieldValue) -> Cow<'v, str> {
    match v {
        FieldValue::Str(s) => Cow::Borrowed(s),
        FieldValue::Int(i) => Cow::Owned(i.to_string()),
        FieldValue::Dec(d) => Cow::Owned(d.normalize().to_string()),
        FieldValue::Bool(b) => Cow::Owned(b.to_string()),
        FieldValue::Time(t) => Cow::Owned(t.to_string()),
    }
}

fn show(v: &FieldValue) -> String {
    match v {
        FieldValue::Str(s) => {
            let mut s: String = s.chars().take(64).collect();
            if s.len() >= 64 {
                s.push('…');
            }
            format!("{s:?}")
        }
        FieldValue::Dec(d) => d.to_string(),
        FieldValue::Int(i) => i.to_string(),
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::Time(t) => t.to_string(),
    }
}

fn json_type(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

fn wrong_type(name: &str, expected: &str, raw: &str) -> Rejection {
    Rejection::new(
        ErrorKind::WrongType,
        format!("field `{name}` must be {expected}, got {}", json_type(raw)),
    )
}

fn is_number(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// `raw`'s value as a field of type `ty`; `plain`: a string in it has no escapes.
fn read_value<'a>(
    name: &str,
    ty: FieldType,
    raw: &'a str,
    plain: bool,
) -> Result<FieldValue<'a>, Rejection> {
    match ty {
        FieldType::String => {
            if !raw.starts_with('"') {
                return Err(wrong_type(name, "a string", raw));
            }
            Ok(FieldValue::Str(json_string(name, raw, plain)?))
        }
        FieldType::Decimal => {
            let (text, quoted) = if raw.starts_with('"') {
                (json_string(name, raw, plain)?, true)
            } else if is_number(raw) {
                (Cow::Borrowed(raw), false)
            } else {
                return Err(wrong_type(name, "a number or a decimal string", raw));
            };
            parse_decimal(&text).map(FieldValue::Dec).ok_or_else(|| {
                let shown: String = text.chars().take(40).collect();
                let what = if quoted { "decimal string" } else { "number" };
                Rejection::new(
                    ErrorKind::InvalidValue,
                    format!(
                        "field `{name}`: {what} `{shown}` is not an exact decimal within ±10^18"
                    ),
                )
            })
        }
        FieldType::Integer => {
            if !is_number(raw) {
                return Err(wrong_type(name, "an integer", raw));
            }
            raw.parse::<i64>().map(FieldValue::Int).map_err(|_| {
                Rejection::new(
                    ErrorKind::InvalidValue,
                    format!("field `{name}`: `{raw}` is not a 64-bit integer"),
                )
            })
        }
        FieldType::Bool => match raw {
            "true" => Ok(FieldValue::Bool(true)),
            "false" => Ok(FieldValue::Bool(false)),
            _ => Err(wrong_type(name, "true or false", raw)),
        },
        FieldType::Timestamp => {
            let ms = if raw.starts_with('"') {
                let s = json_string(name, raw, plain)?;
                match crate::time::parse_utc_ms(&s) {
                    Some(ms) => ms,
                    None => {
                        let t = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
                            let shown: String = s.chars().take(40).collect();
                            Rejection::new(
                                ErrorKind::InvalidValue,
                                format!("field `{name}`: `{shown}` is not an RFC 3339 time ({e})"),
                            )
                        })?;
                        let ms = t.timestamp_millis();
                        if ms < 0 {
                            return Err(Rejection::new(
                                ErrorKind::InvalidValue,
                                format!("field `{name}`: {s} is before 1970-01-01"),
                            ));
                        }
                        ms as u64
                    }
                }
            } else if is_number(raw) {
                match raw.parse::<i64>() {
                    Ok(ms) if ms >= 0 => ms as u64,
                    Ok(_) => {
                        return Err(Rejection::new(
                            ErrorKind::InvalidValue,
                            format!(
                                "field `{name}`: epoch milliseconds must not be negative, got {raw}"
                            ),
                        ));
                    }
                    Err(_) => {
                        let shown: String = raw.chars().take(40).collect();
                        return Err(Rejection::new(
                            ErrorKind::InvalidValue,
                            format!("field `{name}`: `{shown}` is not integer epoch milliseconds"),
                        ));
                    }
                }
            } else {
                return Err(wrong_type(
                    name,
                    "an RFC 3339 string or epoch milliseconds",
                    raw,
                ));
            };
            if ms > MAX_EVENT_TIME_MS {
                return Err(Rejection::new(
                    ErrorKind::InvalidValue,
                    format!("field `{name}`: {ms} is after the year 9999"),
                ));
            }
            Ok(FieldValue::Time(ms))
        }
    }
}

fn json_string<'a>(name: &str, raw: &'a str, plain: bool) -> Result<Cow<'a, str>, Rejection> {
    let inner = &raw[1..raw.len() - 1];
    if plain || !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .map_err(|e| Rejection::new(ErrorKind::MalformedJson, format!("field `{name}`: {e}")))
}

/// Parses an exact decimal: plain (`-12.50`) or scientific (`1.5e3`) notation, within
/// ±[`MAX_ABS_DECIMAL`]. `NaN`, infinities and anything rust_decimal cannot hold are refused.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    if let Some(d) = plain_decimal(text) {
        return Some(d);
    }
    let d = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()?
    } else {
        Decimal::from_str_exact(text).ok()?
    };
    (d.abs() <= MAX_ABS_DECIMAL).then_some(d)
}

/// The common case of [`parse_decimal`] without rust_decimal's general parser: `-?D(.D)?`
/// with at most 18 digits in all (so within ±[`MAX_ABS_DECIMAL`], and the mantissa fits
/// an `i64`), read straight into mantissa and scale, as `from_str_exact` reads it: the
/// scale is the number of fraction digits, leading zeros add nothing. `None` for anything
/// else, negative zero included, which the general parser then reads (or refuses).
fn plain_decimal(text: &str) -> Option<Decimal> {
    let b = text.as_bytes();
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut mantissa = 0i64;
    let mut count = 0u32;
    let mut scale = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + i64::from(c - b'0');
                count += 1;
            }
            b'.' if scale.is_none() && i > 0 && i + 1 < digits.len() => {
                scale = Some(digits.len() - i - 1);
            }
            _ => return None,
        }
        if count > 18 {
            return None;
        }
    }
    if negative && mantissa == 0 {
        return None;
    }
    let mantissa = if negative { -mantissa } else { mantissa };
    Some(Decimal::new(mantissa, scale.unwrap_or(0) as u32))
}

impl FromStr for ErrorKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        let spec = PipelineSpec::from_toml("trades", include_str!("../dataflows/trades.toml"))
            .expect("trades.toml is valid");
        Decoder::new(&spec)
    }

    fn kind(payload: &[u8]) -> ErrorKind {
        match decoder().decode(Some(payload)) {
            Ok(e) => panic!(
                "expected a rejection for {:?}, got {e:?}",
                String::from_utf8_lossy(payload)
            ),
            Err(r) => {
                assert!(!r.reason.is_empty());
                r.kind
            }
        }
    }

    const GOOD: &str = r#"{"trade_id":"TRX-123456","timestamp":"2026-01-13T14:30:45.123Z","amount":50000,"symbol":"AAPL","status":"pending"}"#;

    /// What rust_decimal's own parsers make of `text`, as `parse_decimal` did before its
    /// fast path.
    fn general_decimal(text: &str) -> Option<Decimal> {
        let d = if text.contains(['e', 'E']) {
            Decimal::from_scientific(text).ok()?
        } else {
            Decimal::from_str_exact(text).ok()?
        };
        (d.abs() <= MAX_ABS_DECIMAL).then_some(d)
    }

    proptest::proptest! {
        /// The fast path reads what the general parsers read, to the same mantissa, scale
        /// and sign (`serialize` is all three), and refuses what they refuse.
        #[test]
        fn plain_decimals_read_as_rust_decimal_reads_them(
            text in r"-?[0-9]{0,20}(\.[0-9]{0,20})?|[-+0-9.e_ ]{0,12}"
        ) {
            let fast = plain_decimal(&text);
            let general = general_decimal(&text);
            if let Some(d) = fast {
                proptest::prop_assert_eq!(
                    general.map(|g| g.serialize()),
                    Some(d.serialize()),
                    "{:?}",
                    text
                );
            }
            proptest::prop_assert_eq!(
                parse_decimal(&text).map(|d| d.serialize()),
                general.map(|g| g.serialize()),
                "{:?}",
                text
            );
        }
    }

    #[test]
    fn plain_decimals_take_the_fast_path() {
        for text in [
            "0",
            "7",
            "50000",
            "-12.50",
            "0.001",
            "999999999999999999",
            "007.10",
        ] {
            assert!(plain_decimal(text).is_some(), "{text}");
        }
        for text in [
            "-0",
            "-0.00",
            "1e3",
            "+5",
            ".5",
            "5.",
            "1_000",
            "",
            "-",
            "1.2.3",
            "9999999999999999999",
        ] {
            assert!(plain_decimal(text).is_none(), "{text}");
        }
    }

    #[test]
    fn decodes_the_founding_example() {
        let d = decoder()
            .decode_record(Some(GOOD.as_bytes()))
            .expect("valid");
        let e = &d.event;
        assert_eq!(e.time, 1_768_314_645_123);
        assert_eq!(e.key, "AAPL");
        assert_eq!(d.id, "TRX-123456");
        assert!(
            matches!(d.id, Cow::Borrowed(_)),
            "an id without escapes is borrowed from the payload"
        );
        assert_eq!(
            e.window(0),
            Some(Group {
                key: "AAPL",
                value: Decimal::from(50000)
            })
        );
        assert_eq!(
            e.windows[0].as_ref().map(|g| &g.key),
            Some(&None),
            "key not stored twice"
        );
        assert!(e.values.is_empty(), "only [enrich] needs the values kept");
    }

    #[test]
    fn amounts_stay_exact_and_times_take_both_forms() {
        let p = r#"{"trade_id":"a\u0062","timestamp":1768314645123,"amount":"0.1000000000000000000000000001","symbol":"B\u0052K","status":"filled","extra":{"x":[1,2]}}"#;
        let d = decoder().decode_record(Some(p.as_bytes())).expect("valid");
        assert_eq!(d.id, "ab", "an escaped id is unescaped");
        let e = d.event;
        assert_eq!(e.time, 1_768_314_645_123);
        assert_eq!(e.key, "BRK");
        let value = |e: &Event| e.window(0).map(|g| g.value);
        assert_eq!(
            value(&e).map(|v| v.to_string()).as_deref(),
            Some("0.1000000000000000000000000001")
        );
        let p = r#"{"trade_id":"a","timestamp":"2026-01-13T15:30:45.123+01:00","amount":1.5e3,"symbol":"X","status":"filled"}"#;
        let e = decoder().decode(Some(p.as_bytes())).expect("valid");
        assert_eq!(e.time, 1_768_314_645_123);
        assert_eq!(value(&e), Some(Decimal::from(1500)));
    }

    #[test]
    fn hostile_inputs_are_rejected_with_a_kind() {
        use ErrorKind::*;
        let with = |field: &str, value: &str| {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(GOOD).expect("json");
            v.remove(field);
            let mut s = serde_json::to_string(&v).expect("json");
            if !value.is_empty() {
                s.insert_str(1, &format!("\"{field}\":{value},"));
            }
            s
        };
        assert_eq!(kind(b""), EmptyPayload);
        assert_eq!(
            decoder().decode(None).map_err(|r| r.kind),
            Err(EmptyPayload)
        );
        assert_eq!(kind(&[0xff, 0xfe, b'{', b'}']), NotUtf8);
        assert_eq!(kind(&GOOD.as_bytes()[..40]), MalformedJson);
        assert_eq!(kind(b"{\"trade_id\":\"a\"} trailing"), MalformedJson);
        assert_eq!(kind(b"[1,2,3]"), NotAnObject);
        assert_eq!(kind(b"\"just a string\""), NotAnObject);
        assert_eq!(kind(b"42"), NotAnObject);
        assert_eq!(kind(b"null"), NotAnObject);
        assert_eq!(kind(b"not json"), MalformedJson);
        assert_eq!(kind(with("amount", "").as_bytes()), MissingField);
        assert_eq!(kind(with("amount", "null").as_bytes()), MissingField);
        assert_eq!(kind(with("amount", "true").as_bytes()), WrongType);
        assert_eq!(kind(with("amount", "[1]").as_bytes()), WrongType);
        assert_eq!(kind(with("amount", "NaN").as_bytes()), MalformedJson);
        assert_eq!(kind(with("amount", "\"NaN\"").as_bytes()), InvalidValue);
        assert_eq!(
            kind(with("amount", "\"Infinity\"").as_bytes()),
            InvalidValue
        );
        assert_eq!(kind(with("amount", "1e400").as_bytes()), InvalidValue);
        assert_eq!(
            kind(with("amount", "123456789012345678901234567890").as_bytes()),
            InvalidValue
        );
        assert_eq!(
            kind(with("amount", "1000000000000000001").as_bytes()),
            InvalidValue
        );
        assert_eq!(kind(with("amount", "-5").as_bytes()), RuleViolation);
        assert_eq!(kind(with("amount", "0").as_bytes()), RuleViolation);
        assert_eq!(kind(with("symbol", "5").as_bytes()), WrongType);
        assert_eq!(kind(with("symbol", "\"lower\"").as_bytes()), RuleViolation);
        assert_eq!(
            kind(with("status", "\"exploded\"").as_bytes()),
            RuleViolation
        );
        assert_eq!(
            kind(with("timestamp", "\"yesterday\"").as_bytes()),
            InvalidValue
        );
        assert_eq!(kind(with("timestamp", "-1").as_bytes()), InvalidValue);
        assert_eq!(kind(with("timestamp", "1.5").as_bytes()), InvalidValue);
        assert_eq!(
            kind(with("timestamp", "99999999999999999999").as_bytes()),
            InvalidValue
        );
        assert_eq!(
            kind(with("timestamp", "\"1969-12-31T23:59:59Z\"").as_bytes()),
            InvalidValue
        );
        assert_eq!(kind(with("trade_id", "{}").as_bytes()), WrongType);
        assert_eq!(
            kind(with("symbol", "\"\\ud800\"").as_bytes()),
            MalformedJson
        );
    }

    #[test]
    fn group_keys_are_unambiguous() {
        assert_eq!(group_key(&[]), "");
        assert_eq!(group_key(&["a|b"]), "a|b", "one field: as it is");
        assert_eq!(group_key(&["a|b", "c"]), r"a\|b|c");
        assert_eq!(group_key(&["a", "b|c"]), r"a|b\|c");
        assert_eq!(group_key(&[r"a\", "b"]), r"a\\|b");
        assert_ne!(group_key(&[r"a\", "b"]), group_key(&["a", r"\b"]));
    }

    fn web() -> Decoder {
        let spec = PipelineSpec::from_toml(
            "web_analytics",
            include_str!("../dataflows/web_analytics.toml"),
        )
        .expect("web_analytics.toml is valid");
        Decoder::new(&spec)
    }

    fn web_event(event_type: &str, page: &str, user: &str) -> String {
        format!(
            r#"{{"event_id":"e1","timestamp":1000,"user_id":"{user}","event_type":"{event_type}","page":"{page}"}}"#
        )
    }

    #[test]
    fn windows_get_their_filter_group_and_value() {
        let e = web()
            .decode(Some(web_event("page_view", "/docs", "user-7").as_bytes()))
            .expect("valid");
        let g = |i: usize| e.window(i).map(|g| (g.key, g.value));
        assert_eq!(g(0), Some(("/docs", Decimal::ZERO)), "page views by page");
        assert_eq!(g(1), Some(("user-7", Decimal::ZERO)), "sessions by user");
        assert_eq!(g(2), Some(("", Decimal::ZERO)), "one global group");
        let e = web()
            .decode(Some(
                web_event("conversion", "/checkout", "user-7").as_bytes(),
            ))
            .expect("valid");
        assert_eq!(e.window(0), None, "filtered out");
        assert_eq!(e.window(1), None, "filtered out");
        assert_eq!(
            e.window(2).map(|g| g.value),
            Some(Decimal::ONE),
            "conversion = 1"
        );
    }

    #[test]
    fn the_input_filter_keeps_events_out_of_every_window() {
        let text = include_str!("../dataflows/web_analytics.toml").replace(
            "start_from = \"earliest\"",
            "start_from = \"earliest\"\nfilter = \"user_id != 'user-9'\"",
        );
        let spec = PipelineSpec::from_toml("web", &text).expect("valid");
        let d = Decoder::new(&spec);
        let e = d
            .decode(Some(web_event("page_view", "/", "user-9").as_bytes()))
            .expect("valid, not a dead letter");
        assert_eq!(e.windows.as_slice(), &[None, None, None]);
        let e = d
            .decode(Some(web_event("page_view", "/", "user-8").as_bytes()))
            .expect("valid");
        assert!(e.windows.iter().all(Option::is_some));
    }

    #[test]
    fn expression_rules_name_the_rule_in_the_dead_letter() {
        let r = web()
            .decode(Some(web_event("page_view", "docs", "user-7").as_bytes()))
            .expect_err("no slash");
        assert_eq!(r.kind, ErrorKind::RuleViolation);
        assert_eq!(
            r.reason,
            "validation.rules[1] (`page.startsWith('/') && size(page) <= 200`): \
             `page` must be a path of at most 200 characters"
        );
        let r = web()
            .decode(Some(web_event("page_view", "/", "bob").as_bytes()))
            .expect_err("not a user id");
        assert_eq!(
            r.reason,
            "validation.rules[2]: `user_id` must look like user-0042"
        );
    }

    #[test]
    fn an_expression_that_fails_to_evaluate_is_a_rule_violation() {
        let spec = PipelineSpec::from_toml(
            "x",
            r#"
name = "x"
[input]
topic = "t"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "1s"
idle_timeout = "1s"
[validation.fields]
n = "integer"
[[validation.rules]]
expr = "100 / n != 1"
[[windows]]
name = "w"
kind = "tumbling"
size = "1s"
value = "n * 1000000000000"
aggregates = ["sum"]
[output]
topic = "o"
dead_letter_topic = "d"
late_topic = "l"
"#,
        )
        .expect("valid");
        let d = Decoder::new(&spec);
        let rec = |n: &str| format!(r#"{{"id":"a","ts":1,"k":"x","n":{n}}}"#);
        let r = d
            .decode(Some(rec("0").as_bytes()))
            .expect_err("division by zero");
        assert_eq!(r.kind, ErrorKind::RuleViolation);
        assert!(
            r.reason
                .starts_with("validation.rules[0] (`100 / n != 1`): cannot be evaluated"),
            "{}",
            r.reason
        );
        let r = d.decode(Some(rec("100").as_bytes())).expect_err("false");
        assert!(r.reason.ends_with(": is false"), "{}", r.reason);
        let e = d.decode(Some(rec("5").as_bytes())).expect("valid");
        assert_eq!(
            e.window(0).map(|g| g.value),
            Some(Decimal::from(5_000_000_000_000i64))
        );
        let r = d
            .decode(Some(rec("9000000000").as_bytes()))
            .expect_err("overflow");
        assert!(r.reason.starts_with("windows[0].value"), "{}", r.reason);
    }

    #[test]
    fn one_mebibyte_payloads_are_handled() {
        let mut big = String::from(r#"{"pad":""#);
        big.push_str(&"x".repeat(1 << 20));
        big.push_str(
            r#"","trade_id":"a","timestamp":1,"amount":1,"symbol":"A","status":"filled"}"#,
        );
        let e = decoder()
            .decode(Some(big.as_bytes()))
            .expect("1 MiB of padding is still an event");
        assert_eq!(e.key, "A");
        let huge = vec![b'{'; (4 << 20) + 1];
        assert_eq!(kind(&huge), ErrorKind::PayloadTooLarge);
        let deep = "[".repeat(100_000);
        assert_eq!(kind(deep.as_bytes()), ErrorKind::MalformedJson);
    }

    fn traced(field: &str) -> Decoder {
        let text = include_str!("../dataflows/trades.toml").replace(
            "start_from = \"earliest\"",
            &format!("start_from = \"earliest\"\ncorrelation_id = {{ field = \"{field}\" }}"),
        );
        let spec = PipelineSpec::from_toml("traced", &text).expect("valid");
        Decoder::new(&spec)
    }

    #[test]
    fn correlation_ids_come_from_a_member_declared_or_not() {
        let with_trace = |trace: &str| GOOD.replacen('{', &format!("{{\"trace_id\":{trace},"), 1);
        let d = traced("trace_id");
        let id = |p: &str| d.decode(Some(p.as_bytes())).expect("valid").correlation_id;
        assert_eq!(id(&with_trace(r#""t-1""#)), Some("t-1".to_string()));
        assert_eq!(
            id(&with_trace(r#""t\u002d2""#)),
            Some("t-2".to_string()),
            "unescaped"
        );
        assert_eq!(
            id(&with_trace("12.50")),
            Some("12.50".to_string()),
            "as written"
        );
        assert_eq!(id(&with_trace(r#""""#)), None, "empty");
        assert_eq!(id(&with_trace("null")), None);
        assert_eq!(id(&with_trace("{}")), None);
        assert_eq!(id(GOOD), None, "absent");
        // A declared field works too, and events are otherwise the same as without ids.
        let e = traced("trade_id")
            .decode(Some(GOOD.as_bytes()))
            .expect("valid");
        assert_eq!(e.correlation_id.as_deref(), Some("TRX-123456"));
        let plain = decoder().decode(Some(GOOD.as_bytes())).expect("valid");
        assert_eq!(
            Event {
                correlation_id: None,
                ..e
            },
            plain
        );
        assert_eq!(plain.correlation_id, None, "not configured: no id");
        // A record refused after its payload was read keeps its id; a malformed one has none.
        let bad = with_trace(r#""t-3""#).replace("\"pending\"", "\"exploded\"");
        let r = d.decode(Some(bad.as_bytes())).expect_err("rule violation");
        assert_eq!(
            (r.kind, r.correlation_id.as_deref()),
            (ErrorKind::RuleViolation, Some("t-3"))
        );
        let cut = with_trace(r#""t-4""#);
        let r = d
            .decode(Some(&cut.as_bytes()[..cut.len() - 3]))
            .expect_err("cut short");
        assert_eq!((r.kind, r.correlation_id), (ErrorKind::MalformedJson, None));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decoder().decode(Some(&bytes));
        }

        #[test]
        fn arbitrary_json_objects_never_panic(s in r#"\{("[a-z_]{1,9}":("[^"\\]{0,12}"|-?[0-9]{1,25}(\.[0-9]{0,30})?|true|null|\[\]),?){0,6}\}"#) {
            let _ = decoder().decode(Some(s.as_bytes()));
        }
    }
}
