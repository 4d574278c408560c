//! Dataflow files (`dataflows/*.toml`) → a validated [`PipelineSpec`].
//!
//! A dataflow file says what to read, how to check it, which windows to compute and where
//! results go. Reading it reports every bad field at once, each message naming the field
//! (`windows[0].size: ...`), and refuses unknown settings so a typo cannot be ignored.
//!
//! ```toml
//! name = "trades"
//! [input]
//! topic = "trades"
//! event_time_field = "timestamp"   # RFC 3339 string or integer epoch milliseconds
//! key_field = "symbol"
//! id_field = "trade_id"
//! max_out_of_orderness = "5s"
//! idle_timeout = "30s"
//! correlation_id = { field = "trace_id" }   # or { header = "traceparent" }: optional
//! correlation_ids_per_result = 16  # ids a window result carries (the smallest (t, id))
//! [validation.fields]              # required fields and their types
//! amount = "decimal"
//! status = "string"
//! [[validation.rules]]
//! field = "amount"
//! gt = "0"
//! [[validation.rules]]              # or a CEL condition on any fields (crate::expr)
//! expr = "status != 'cancelled' || amount < 1000000.0"
//! reason = "large trades cannot be cancelled"
//! [[windows]]
//! name = "trades_1m"
//! kind = "tumbling"                # or "hopping" (alias "sliding") with slide = "10s"
//! size = "1m"
//! grace = "10s"
//! field = "amount"                 # or value = "<CEL returning int, uint or bool>"
//! group_by = ["symbol"]            # the default: input.key_field; [] = one group
//! filter = "status == 'filled'"    # only these events count in this window
//! aggregates = ["count", "sum", "min", "max", "avg"]
//! [dedupe]                        # optional: drop repeated event ids
//! horizon = "5m"
//! dead_letter = true
//! [output]
//! topic = "trades-windows"
//! dead_letter_topic = "trades-dead-letters"
//! late_topic = "trades-late"
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use regex::Regex;
use rust_decimal::Decimal;

use crate::expr::{Expr, Returns};
use crate::fields::{Problems, Table, parse_toml};

/// A dataflow that failed to load: every problem, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{source_name} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
pub struct SpecError {
    /// The file (or text) that was read.
    pub source_name: String,
    /// One message per bad field.
    pub problems: Vec<String>,
}

/// The type a validated field must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// A JSON string.
    String,
    /// An exact decimal: a JSON number or a decimal string.
    Decimal,
    /// An integer JSON number.
    Integer,
    /// `true` or `false`.
    Bool,
    /// RFC 3339 text or integer epoch milliseconds.
    Timestamp,
}

impl FieldType {
    pub(crate) fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "string" => FieldType::String,
            "decimal" | "number" => FieldType::Decimal,
            "integer" => FieldType::Integer,
            "bool" | "boolean" => FieldType::Bool,
            "timestamp" => FieldType::Timestamp,
            _ => return None,
        })
    }

    /// How the type is named in files and messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Decimal => "decimal",
            FieldType::Integer => "integer",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }
}

/// A field every event must carry, with its type.
#[derive(Clone, Debug)]
pub struct FieldSpec {
    /// The JSON member name.
    pub name: String,
    /// Its required type.
    pub ty: FieldType,
}

/// A check on one field's value.
#[derive(Clone, Debug)]
pub enum Check {
    /// Numeric comparison with a decimal bound.
    Compare(Comparison, Decimal),
    /// The string must be one of these.
    OneOf(Vec<String>),
    /// The string must match this regular expression (anchored as written).
    Pattern(Regex),
    /// A CEL condition on any declared fields must be true ([`crate::expr`]).
    Expr(Expr),
}

/// A comparison operator of a numeric rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Comparison {
    /// The operator as written in messages.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
        }
    }

    /// Whether `value <op> bound` holds.
    pub fn holds(self, value: Decimal, bound: Decimal) -> bool {
        match self {
            Comparison::Gt => value > bound,
            Comparison::Ge => value >= bound,
            Comparison::Lt => value < bound,
            Comparison::Le => value <= bound,
        }
    }
}

/// A validation rule: a check on one declared field, or a CEL condition.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule as named in messages: `validation.rules[2]`.
    pub name: String,
    /// Index into [`Validation::fields`] (none for an `expr` rule).
    pub field: Option<usize>,
    /// What must hold.
    pub check: Check,
    /// Written to the dead letter when the rule fails, after the rule's name.
    pub reason: Option<String>,
}

/// What an event must look like to be processed.
#[derive(Clone, Debug)]
pub struct Validation {
    /// Required fields, with the event-time, key and id fields among them.
    pub fields: Vec<FieldSpec>,
    /// Rules, checked in order; the first that fails names the reason.
    pub rules: Vec<Rule>,
    /// Payloads larger than this are dead letters without being parsed.
    pub max_payload_bytes: usize,
}

/// Where reading starts when no position is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained offset.
    Earliest,
    /// Only records produced after start-up.
    Latest,
}

/// The input topic and how event time is read from it.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// The Kafka topic.
    pub topic: String,
    /// Index of the event-time field in [`Validation::fields`].
    pub time_field: usize,
    /// Index of the key field.
    pub key_field: usize,
    /// Index of the event-id field.
    pub id_field: usize,
    /// Bounded out-of-orderness, in milliseconds.
    pub max_out_of_orderness_ms: u64,
    /// After this long without data a partition stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Where to start without recorded or given positions.
    pub start_from: StartFrom,
    /// Only events for which this is true reach any window (others are skipped, not
    /// dead letters).
    pub filter: Option<Expr>,
    /// Where each event's correlation id comes from, when configured (`correlation_id`).
    pub correlation: Option<CorrelationSpec>,
}

/// Where an event's correlation id is read from: `correlation_id = { field = "trace_id" }`
/// or `correlation_id = { header = "traceparent" }` in `[input]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorrelationSource {
    /// A member of the JSON event, a string (or a number, taken as written). It need not
    /// be declared in `[validation.fields]`; absent, null or empty means no id.
    Field(String),
    /// A Kafka header of the input record, taken as UTF-8 (invalid bytes replaced); also
    /// found for records that are not valid events. Absent or empty means no id.
    Header(String),
}

/// Carrying each event's correlation id to the outputs it contributes to: its dead letter
/// or late record, and its window results (see [`crate::correlation::CorrelationIds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationSpec {
    /// Where the id comes from.
    pub source: CorrelationSource,
    /// How many ids a window result carries at most (`correlation_ids_per_result`,
    /// default [`CorrelationSpec::DEFAULT_PER_RESULT`]): those of the smallest
    /// (event time, id) pairs among its events.
    pub per_result: usize,
}

impl CorrelationSpec {
    /// The default number of ids per window result.
    pub const DEFAULT_PER_RESULT: usize = 16;
    /// The most ids a window result may carry.
    pub const MAX_PER_RESULT: i64 = 256;
}

/// An aggregate computed per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aggregate {
    /// Number of events.
    Count,
    /// Exact decimal sum.
    Sum,
    /// Least value.
    Min,
    /// Greatest value.
    Max,
    /// `sum / count`, rounded half-to-even to `avg_scale` decimal places.
    Avg,
    /// Sessions only: last event time − first event time, in milliseconds.
    Duration,
    /// Sessions only: whether the session has exactly one counted event.
    Bounce,
}

impl Aggregate {
    fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "avg" => Aggregate::Avg,
            "duration" => Aggregate::Duration,
            "bounce" => Aggregate::Bounce,
            _ => return None,
        })
    }
}

/// How windows are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping `[start, start + size)`, aligned to the epoch.
    Tumbling {
        /// Window length in milliseconds.
        size_ms: u64,
    },
    /// `[start, start + size)` for every `start` that is a multiple of `slide`, aligned to
    /// the epoch (Flink's sliding windows, Kafka Streams' hopping windows).
    Hopping {
        /// Window length in milliseconds.
        size_ms: u64,
        /// Distance between window starts in milliseconds (at most `size_ms`).
        slide_ms: u64,
    },
    /// Per key, runs of records each at most `gap` after the previous one, cut at
    /// epoch-aligned spans of `max_duration` ([`crate::window::session`]).
    Session {
        /// Inactivity gap in milliseconds.
        gap_ms: u64,
        /// The longest a session can last, in milliseconds.
        max_duration_ms: u64,
    },
}

/// What a window writes, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emit {
    /// One result per (key, window), when the window closes at `end + grace`.
    #[default]
    Final,
    /// A changelog: an upsert per (key, window) whenever its result changes, then the
    /// final value (`"final": true`); a session merged into another is deleted with a
    /// tombstone. Message keys name the key and the window, so a compacted topic keeps
    /// each window's latest value ([`crate::window::operator`]).
    Updates {
        /// Changes are gathered into steps of this much event time (0: every change).
        interval_ms: u64,
    },
}

/// One windowed aggregation.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// Name, carried in every result and late record.
    pub name: String,
    /// How windows are cut.
    pub kind: WindowKind,
    /// How long after its end a window still accepts records, in milliseconds.
    pub grace_ms: u64,
    /// Index of the aggregated numeric field among [`PipelineSpec::numeric_fields`].
    pub value: Option<usize>,
    /// Or the aggregated value computed per event (int, uint or bool as 0/1).
    pub value_expr: Option<Expr>,
    /// Only events for which this is true count in this window.
    pub filter: Option<Expr>,
    /// The fields whose values make an event's group key, in order (indices into
    /// [`Validation::fields`]); empty: one global group. See [`crate::codec::group_key`].
    pub group_by: Vec<usize>,
    /// What to compute, in output order.
    pub aggregates: Vec<Aggregate>,
    /// Topic the results go to.
    pub topic: String,
    /// Decimal places of `avg`.
    pub avg_scale: u32,
    /// Final results only, or a changelog of updates.
    pub emit: Emit,
}

/// Where results, dead letters and late records are written.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    /// Default topic for window results.
    pub topic: String,
    /// Topic for records that could not be decoded or failed validation.
    pub dead_letter_topic: String,
    /// Topic for records whose window had already closed.
    pub late_topic: String,
    /// Partitions of output topics that waterline creates.
    pub partitions: i32,
}

/// Dropping repeated events: a record is a duplicate when an earlier record of the same
/// partition has the same id and an event time at most `horizon` apart. The first in
/// offset order wins, so the choice does not depend on timing. Producer retries and
/// re-sent events land in the partition of their key, which is where they are looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupeSpec {
    /// How far apart in event time two records with the same id are still one event, ms.
    pub horizon_ms: u64,
    /// Write each duplicate to the dead-letter topic (kind `duplicate`); otherwise they are
    /// only counted.
    pub dead_letter: bool,
}

/// A validated dataflow.
#[derive(Clone, Debug)]
pub struct PipelineSpec {
    /// The dataflow's name.
    pub name: String,
    /// Input.
    pub input: InputSpec,
    /// Validation.
    pub validation: Validation,
    /// Declared decimal fields that windows aggregate, as indices into `validation.fields`;
    /// events carry their values in this order.
    pub numeric_fields: Vec<usize>,
    /// The windows, in file order.
    pub windows: Vec<WindowSpec>,
    /// Duplicate dropping, when configured.
    pub dedupe: Option<DedupeSpec>,
    /// Output topics.
    pub output: OutputSpec,
    /// Enrichment from a reference topic, when configured (`[enrich]`, [`crate::enrich`]).
    pub enrich: Option<crate::enrich::EnrichSpec>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PipelineSpec {
    /// Reads and validates a dataflow file.
    pub fn from_file(path: &Path) -> Result<PipelineSpec, SpecError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            source_name: name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::from_toml(&name, &text)
    }

    /// Validates a dataflow given as TOML text; `source_name` names it in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<PipelineSpec, SpecError> {
        let mut problems = Problems::default();
        let spec = parse_toml(text, &mut problems).and_then(|t| read_spec(&t, &mut problems));
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(SpecError {
                source_name: source_name.to_string(),
                problems: problems.into_messages(),
            }),
        }
    }

    /// The field an event's time is read from.
    pub fn time_field(&self) -> &FieldSpec {
        &self.validation.fields[self.input.time_field]
    }

    /// The longest span of event time over which one record can still change an output:
    /// the largest window size plus grace, plus the dedupe horizon (a record can make a
    /// later one a duplicate).
    pub fn reach_ms(&self) -> u64 {
        self.window_reach_ms()
            .saturating_add(self.dedupe.map_or(0, |d| d.horizon_ms))
    }

    /// The largest window size plus grace: no record more than this behind the watermark
    /// can reach a window still open.
    pub fn window_reach_ms(&self) -> u64 {
        self.windows
            .iter()
            .map(|w| match w.kind {
                WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => {
                    size_ms.saturating_add(w.grace_ms)
                }
                WindowKind::Session {
                    max_duration_ms, ..
                } => max_duration_ms.saturating_add(w.grace_ms),
            })
            .max()
            .unwrap_or(0)
    }
}

/// Reads `correlation_id` and `correlation_ids_per_result` of `[input]`.
fn read_correlation(
    input: &Table,
    fields: &[FieldSpec],
    problems: &mut Problems,
) -> Option<CorrelationSpec> {
    let per_result = input.opt_integer(
        "correlation_ids_per_result",
        0..=CorrelationSpec::MAX_PER_RESULT,
        problems,
    );
    let Some(t) = input.table("correlation_id", false, problems) else {
        if per_result.is_some() && input.raw("correlation_id").is_none() {
            problems.field(
                &input.path_of("correlation_ids_per_result"),
                "has no effect without `correlation_id`",
            );
        }
        return None;
    };
    let field = t.opt_string("field", problems);
    let header = t.opt_string("header", problems);
    let source = match (field, header) {
        (Some(name), None) => match fields.iter().find(|f| f.name == name) {
            Some(f) if !matches!(f.ty, FieldType::String | FieldType::Integer) => {
                problems.field(
                    &t.path_of("field"),
                    format!(
                        "field `{name}` is declared as {} in validation.fields; a correlation \
                         id is a string (or an integer)",
                        f.ty.name()
                    ),
                );
                None
            }
            _ => Some(CorrelationSource::Field(name)),
        },
        (None, Some(name)) => Some(CorrelationSource::Header(name)),
        (Some(_), Some(_)) => {
            problems.field(t.path(), "give `field` or `header`, not both");
            None
        }
        (None, None) => {
            problems.field(
                t.path(),
                "needs `field = \"<event member>\"` or `header = \"<Kafka header>\"`",
            );
            None
        }
    };
    t.finish(problems);
    Some(CorrelationSpec {
        source: source?,
        per_result: per_result.map_or(CorrelationSpec::DEFAULT_PER_RESULT, |n| n as usize),
    })
}

fn read_spec(t: &toml::Table, problems: &mut Problems) -> Option<PipelineSpec> {
    let top = Table::new("", t);
    let name = top.string("name", problems);

    // Fields are read first: the input and the rules refer to them by name.
    let validation_t = top.table("validation", false, problems);
    let mut fields: Vec<FieldSpec> = Vec::new();
    if let Some(fields_t) = validation_t
        .as_ref()
        .and_then(|v| v.table("fields", false, problems))
    {
        for key in fields_t.keys() {
            if let Some(ty) = fields_t.string(&key, problems) {
                match FieldType::parse(&ty) {
                    Some(ty) => fields.push(FieldSpec {
                        name: key.clone(),
                        ty,
                    }),
                    None => problems.field(
                        &fields_t.path_of(&key),
                        format!(
                            "unknown type `{ty}`; use string, decimal, integer, bool or timestamp"
                        ),
                    ),
                }
            }
        }
        fields_t.finish(problems);
    }

    let input = top.table("input", true, problems);
    let mut require =
        |table: &Table, key: &str, ty: FieldType, problems: &mut Problems| -> Option<usize> {
            let name = table.string(key, problems)?;
            match fields.iter().position(|f| f.name == name) {
                Some(i)
                    if fields[i].ty == ty
                        || (ty == FieldType::String
                            && fields[i].ty == FieldType::Integer
                            && key != "event_time_field") =>
                {
                    Some(i)
                }
                Some(i) => {
                    problems.field(
                        &table.path_of(key),
                        format!(
                            "field `{name}` is declared as {} in validation.fields but must be {}",
                            fields[i].ty.name(),
                            ty.name()
                        ),
                    );
                    None
                }
                None => {
                    fields.push(FieldSpec { name, ty });
                    Some(fields.len() - 1)
                }
            }
        };
    let mut input_spec = None;
    if let Some(input) = &input {
        let topic = input.string("topic", problems);
        let time_field = require(input, "event_time_field", FieldType::Timestamp, problems);
        let key_field = require(input, "key_field", FieldType::String, problems);
        let id_field = require(input, "id_field", FieldType::String, problems);
        let correlation = read_correlation(input, &fields, problems);
        let ooo = input.duration("max_out_of_orderness", problems);
        let idle = input.duration("idle_timeout", problems);
        let filter = input.opt_string("filter", problems).and_then(|src| {
            Expr::compile(&src, &fields, Returns::Bool)
                .map_err(|e| problems.field(&input.path_of("filter"), e))
                .ok()
        });
        let start_from = match input.opt_string("start_from", problems).as_deref() {
            None | Some("earliest") => Some(StartFrom::Earliest),
            Some("latest") => Some(StartFrom::Latest),
            Some(other) => {
                problems.field(
                    &input.path_of("start_from"),
                    format!("must be \"earliest\" or \"latest\", found `{other}`"),
                );
                None
            }
        };
        if let Some(idle) = idle
            && idle.is_zero()
        {
            problems.field(&input.path_of("idle_timeout"), "must be greater than zero");
        }
        if let (
            Some(topic),
            Some(time_field),
            Some(key_field),
            Some(id_field),
            Some(ooo),
            Some(idle),
            Some(start_from),
        ) = (
            topic, time_field, key_field, id_field, ooo, idle, start_from,
        ) {
            input_spec = Some(InputSpec {
                topic,
                time_field,
                key_field,
                id_field,
                max_out_of_orderness_ms: millis(ooo),
                idle_timeout: idle,
                start_from,
                filter,
                correlation,
            });
        }
    }
    if let Some(input) = input {
        input.finish(problems);
    }

    let mut rules = Vec::new();
    let mut max_payload_bytes = 4 << 20;
    if let Some(v) = &validation_t {
        for rule_t in v.tables("rules", problems) {
            if let Some(rule) = read_rule(&rule_t, &fields, problems) {
                rules.push(rule);
            }
            rule_t.finish(problems);
        }
        if let Some(n) = v.opt_integer("max_payload_bytes", 1..=(64 << 20), problems) {
            max_payload_bytes = n as usize;
        }
    }
    if let Some(v) = validation_t {
        v.finish(problems);
    }

    let output_t = top.table("output", true, problems);
    let mut output = None;
    if let Some(o) = &output_t {
        let topic = o.string("topic", problems);
        let dlq = o.string("dead_letter_topic", problems);
        let late = o.string("late_topic", problems);
        let partitions = o
            .opt_integer("partitions", 1..=10_000, problems)
            .unwrap_or(8) as i32;
        if let (Some(topic), Some(dead_letter_topic), Some(late_topic)) = (topic, dlq, late) {
            output = Some(OutputSpec {
                topic,
                dead_letter_topic,
                late_topic,
                partitions,
            });
        }
    }
    if let Some(o) = output_t {
        o.finish(problems);
    }

    let mut dedupe = None;
    if let Some(d) = top.table("dedupe", false, problems) {
        let horizon = d.duration("horizon", problems);
        let dead_letter = d.opt_bool("dead_letter", problems).unwrap_or(false);
        match horizon {
            Some(h) if h.is_zero() => {
                problems.field(&d.path_of("horizon"), "must be greater than zero");
            }
            Some(h) => {
                dedupe = Some(DedupeSpec {
                    horizon_ms: millis(h),
                    dead_letter,
                });
            }
            None => {}
        }
        d.finish(problems);
    }

    let input_key = input_spec
        .as_ref()
        .map(|i| fields[i.key_field].name.as_str());
    let mut enrich = crate::enrich::read(&top, &fields, input_key, problems);
    // Windows may aggregate enriched fields too.
    let all_fields: Vec<FieldSpec> = fields
        .iter()
        .chain(enrich.iter().flat_map(|e| e.fields.iter()))
        .cloned()
        .collect();

    let mut numeric_fields: Vec<usize> = Vec::new();
    let mut windows = Vec::new();
    let window_tables = top.tables("windows", problems);
    if window_tables.is_empty() {
        problems.field("windows", "at least one [[windows]] table is required");
    }
    let key_field = input_spec.as_ref().map(|i| i.key_field);
    for w in window_tables {
        if let Some(spec) = read_window(
            &w,
            &all_fields,
            fields.len(),
            key_field,
            &mut numeric_fields,
            output.as_ref(),
            problems,
        ) {
            if windows.iter().any(|x: &WindowSpec| x.name == spec.name) {
                problems.field(
                    &w.path_of("name"),
                    format!("`{}` is used by another window", spec.name),
                );
            }
            windows.push(spec);
        }
        w.finish(problems);
    }
    top.finish(problems);
    crate::enrich::split_numeric(
        enrich.as_mut(),
        fields.len(),
        &mut numeric_fields,
        &mut windows,
        problems,
    );

    Some(PipelineSpec {
        name: name?,
        input: input_spec?,
        validation: Validation {
            fields,
            rules,
            max_payload_bytes,
        },
        numeric_fields,
        windows,
        dedupe,
        output: output?,
        enrich,
    })
}

fn read_rule(t: &Table, fields: &[FieldSpec], problems: &mut Problems) -> Option<Rule> {
    let reason = t.opt_string("reason", problems);
    if let Some(src) = t.opt_string("expr", problems) {
        // Any other check beside it is reported as an unknown setting.
        if t.raw("field").is_some() {
            problems.field(
                &t.path_of("field"),
                "an `expr` rule names its fields in the expression; remove `field`",
            );
        }
        return match Expr::compile(&src, fields, Returns::Bool) {
            Ok(e) => Some(Rule {
                name: t.path().to_string(),
                field: None,
                check: Check::Expr(e),
                reason,
            }),
            Err(e) => {
                problems.field(&t.path_of("expr"), e);
                None
            }
        };
    }
    let name = t.string("field", problems)?;
    let Some(field) = fields.iter().position(|f| f.name == name) else {
        // The checks of a rule on an unknown field are not themselves unknown settings.
        for key in ["gt", "ge", "lt", "le", "one_of", "pattern"] {
            t.raw(key);
        }
        problems.field(
            &t.path_of("field"),
            format!("`{name}` is not declared in [validation.fields]"),
        );
        return None;
    };
    let ty = fields[field].ty;
    let mut checks = Vec::new();
    for (key, cmp) in [
        ("gt", Comparison::Gt),
        ("ge", Comparison::Ge),
        ("lt", Comparison::Lt),
        ("le", Comparison::Le),
    ] {
        if let Some(v) = t.raw(key) {
            let bound = match v {
                toml::Value::Integer(i) => Some(Decimal::from(*i)),
                toml::Value::String(s) => Decimal::from_str(s).ok(),
                _ => None,
            };
            match bound {
                Some(b) if matches!(ty, FieldType::Decimal | FieldType::Integer) => {
                    checks.push(Check::Compare(cmp, b))
                }
                Some(_) => problems.field(
                    &t.path_of(key),
                    format!(
                        "numeric rules need a decimal or integer field; `{name}` is {}",
                        ty.name()
                    ),
                ),
                None => problems.field(
                    &t.path_of(key),
                    "expected an integer or a decimal string such as \"0.01\"",
                ),
            }
        }
    }
    if let Some(values) = t.opt_strings("one_of", problems) {
        if ty != FieldType::String {
            problems.field(
                &t.path_of("one_of"),
                format!("needs a string field; `{name}` is {}", ty.name()),
            );
        } else if values.is_empty() {
            problems.field(&t.path_of("one_of"), "must list at least one value");
        } else {
            checks.push(Check::OneOf(values));
        }
    }
    if let Some(p) = t.opt_string("pattern", problems) {
        if ty != FieldType::String {
            problems.field(
                &t.path_of("pattern"),
                format!("needs a string field; `{name}` is {}", ty.name()),
            );
        } else {
            match Regex::new(&p) {
                Ok(re) => checks.push(Check::Pattern(re)),
                Err(e) => problems.field(
                    &t.path_of("pattern"),
                    format!("not a valid regular expression: {e}"),
                ),
            }
        }
    }
    match checks.len() {
        1 => checks.pop().map(|check| Rule {
            name: t.path().to_string(),
            field: Some(field),
            check,
            reason,
        }),
        0 => {
            problems.field(
                t.path(),
                "a rule needs one of gt, ge, lt, le, one_of, pattern, or an expr",
            );
            None
        }
        _ => {
            problems.field(
                t.path(),
                "a rule holds exactly one check; write one [[validation.rules]] per check",
            );
            None
        }
    }
}

/// Reads one `[[windows]]` table. `all_fields` are the input's declared fields followed by
/// the enriched ones; a window can aggregate any of them (`field`), while its expressions
/// and `group_by` see the first `input_fields`, which the decoder reads.
fn read_window(
    t: &Table,
    all_fields: &[FieldSpec],
    input_fields: usize,
    key_field: Option<usize>,
    numeric_fields: &mut Vec<usize>,
    output: Option<&OutputSpec>,
    problems: &mut Problems,
) -> Option<WindowSpec> {
    let fields = &all_fields[..input_fields.min(all_fields.len())];
    let name = t.string("name", problems);
    let kind = match t.string("kind", problems).as_deref() {
        Some("tumbling") => {
            let size = t.duration("size", problems);
            match size.map(millis) {
                Some(0) => {
                    problems.field(&t.path_of("size"), "must be at least 1ms");
                    None
                }
                Some(size_ms) => Some(WindowKind::Tumbling { size_ms }),
                None => None,
            }
        }
        Some("hopping" | "sliding") => {
            let size = t.duration("size", problems).map(millis);
            let slide = t.duration("slide", problems).map(millis);
            match (size, slide) {
                (Some(0), _) => {
                    problems.field(&t.path_of("size"), "must be at least 1ms");
                    None
                }
                (_, Some(0)) => {
                    problems.field(&t.path_of("slide"), "must be at least 1ms");
                    None
                }
                (Some(size_ms), Some(slide_ms)) if slide_ms > size_ms => {
                    problems.field(
                        &t.path_of("slide"),
                        format!(
                            "must be at most the size ({size_ms} ms); a slide longer than the \
                             window would leave records in no window"
                        ),
                    );
                    None
                }
                (Some(size_ms), Some(slide_ms)) => Some(WindowKind::Hopping { size_ms, slide_ms }),
                _ => None,
            }
        }
        Some("session") => {
            let gap = t.duration("gap", problems).map(millis);
            let max = t.duration("max_duration", problems).map(millis);
            match (gap, max) {
                (Some(0), _) => {
                    problems.field(&t.path_of("gap"), "must be at least 1ms");
                    None
                }
                (Some(gap_ms), Some(max_duration_ms)) if max_duration_ms < gap_ms => {
                    problems.field(
                        &t.path_of("max_duration"),
                        format!("must be at least the gap ({gap_ms} ms)"),
                    );
                    None
                }
                (Some(gap_ms), Some(max_duration_ms)) => Some(WindowKind::Session {
                    gap_ms,
                    max_duration_ms,
                }),
                _ => None,
            }
        }
        Some(other) => {
            problems.field(
                &t.path_of("kind"),
                format!(
                    "unknown window kind `{other}`; use \"tumbling\", \"hopping\" (or \"sliding\") or \"session\""
                ),
            );
            None
        }
        None => None,
    };
    let grace = t.opt_duration("grace", problems).map(millis).unwrap_or(0);
    let aggregates = t.opt_strings("aggregates", problems).unwrap_or_else(|| {
        problems.field(
            &t.path_of("aggregates"),
            "is required: any of count, sum, min, max, avg",
        );
        Vec::new()
    });
    let mut aggs = Vec::new();
    for (i, a) in aggregates.iter().enumerate() {
        match Aggregate::parse(a) {
            Some(a) if !aggs.contains(&a) => aggs.push(a),
            Some(_) => problems.field(
                &format!("{}[{i}]", t.path_of("aggregates")),
                format!("`{a}` is listed twice"),
            ),
            None => problems.field(
                &format!("{}[{i}]", t.path_of("aggregates")),
                format!(
                    "unknown aggregate `{a}`; use count, sum, min, max, avg, \
                     or for sessions duration and bounce"
                ),
            ),
        }
    }
    if !matches!(kind, Some(WindowKind::Session { .. }) | None) {
        for (i, a) in aggregates.iter().enumerate() {
            if matches!(
                Aggregate::parse(a),
                Some(Aggregate::Duration | Aggregate::Bounce)
            ) {
                problems.field(
                    &format!("{}[{i}]", t.path_of("aggregates")),
                    format!("`{a}` is an aggregate of session windows only"),
                );
            }
        }
    }
    let needs_value = aggs.iter().any(|a| {
        matches!(
            a,
            Aggregate::Sum | Aggregate::Min | Aggregate::Max | Aggregate::Avg
        )
    });
    let filter = t.opt_string("filter", problems).and_then(|src| {
        Expr::compile(&src, fields, Returns::Bool)
            .map_err(|e| problems.field(&t.path_of("filter"), e))
            .ok()
    });
    let group_by = match t.opt_strings("group_by", problems) {
        None => key_field.into_iter().collect(),
        Some(names) => {
            let mut by = Vec::new();
            for (i, f) in names.iter().enumerate() {
                match fields.iter().position(|x| &x.name == f) {
                    Some(j) if by.contains(&j) => problems.field(
                        &format!("{}[{i}]", t.path_of("group_by")),
                        format!("`{f}` is listed twice"),
                    ),
                    Some(j) => by.push(j),
                    None => problems.field(
                        &format!("{}[{i}]", t.path_of("group_by")),
                        format!("`{f}` is not declared in [validation.fields]"),
                    ),
                }
            }
            by
        }
    };
    let field = t.opt_string("field", problems);
    let value_src = t.opt_string("value", problems);
    let value_expr = value_src.as_ref().and_then(|src| {
        if field.is_some() {
            problems.field(
                &t.path_of("value"),
                "a window aggregates either a `field` or a `value` expression, not both",
            );
            return None;
        }
        Expr::compile(src, fields, Returns::Number)
            .map_err(|e| problems.field(&t.path_of("value"), e))
            .ok()
    });
    let value = match (&field, needs_value) {
        (None, true) if value_src.is_some() => None,
        (None, true) => {
            problems.field(
                &t.path_of("field"),
                "is required by sum, min, max and avg: the numeric field to aggregate \
                 (or a `value` expression)",
            );
            None
        }
        (None, false) => None,
        (Some(f), _) => match all_fields.iter().position(|x| &x.name == f) {
            Some(i)
                if all_fields[i].ty == FieldType::Decimal
                    || all_fields[i].ty == FieldType::Integer =>
            {
                Some(match numeric_fields.iter().position(|&n| n == i) {
                    Some(j) => j,
                    None => {
                        numeric_fields.push(i);
                        numeric_fields.len() - 1
                    }
                })
            }
            Some(i) => {
                problems.field(
                    &t.path_of("field"),
                    format!(
                        "`{f}` is declared as {}; aggregates need decimal or integer",
                        all_fields[i].ty.name()
                    ),
                );
                None
            }
            None => {
                problems.field(
                    &t.path_of("field"),
                    format!("`{f}` is not declared in [validation.fields]"),
                );
                None
            }
        },
    };
    let avg_scale = t.opt_integer("avg_scale", 0..=12, problems).unwrap_or(6) as u32;
    let interval = t.opt_duration("update_interval", problems).map(millis);
    let emit = match t.opt_string("emit", problems).as_deref() {
        None | Some("final") => {
            if interval.is_some() {
                problems.field(
                    &t.path_of("update_interval"),
                    "applies to emit = \"updates\" only",
                );
            }
            Some(Emit::Final)
        }
        Some("updates") => Some(Emit::Updates {
            interval_ms: interval.unwrap_or(0),
        }),
        Some(other) => {
            problems.field(
                &t.path_of("emit"),
                format!("must be \"final\" or \"updates\", found `{other}`"),
            );
            None
        }
    };
    let topic = t
        .opt_string("topic", problems)
        .or_else(|| output.map(|o| o.topic.clone()));
    if needs_value && value.is_none() && value_expr.is_none() {
        return None;
    }
    Some(WindowSpec {
        name: name?,
        kind: kind?,
        grace_ms: grace,
        value,
        value_expr,
        filter,
        group_by,
        aggregates: aggs,
        topic: topic?,
        avg_scale,
        emit: emit?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADES: &str = include_str!("../dataflows/trades.toml");

    #[test]
    fn the_shipped_trades_dataflow_is_valid() {
        let spec = PipelineSpec::from_toml("trades.toml", TRADES).expect("trades.toml is valid");
        assert_eq!(spec.input.topic, "trades");
        assert_eq!(spec.time_field().name, "timestamp");
        assert!(!spec.windows.is_empty());
        assert_eq!(
            spec.dedupe,
            Some(DedupeSpec {
                horizon_ms: 300_000,
                dead_letter: true
            })
        );
        assert_eq!(
            spec.reach_ms(),
            70_000 + 300_000,
            "window size + grace + dedupe horizon"
        );
    }

    #[test]
    fn the_shipped_web_analytics_dataflow_is_valid() {
        let spec = PipelineSpec::from_toml(
            "web_analytics.toml",
            include_str!("../dataflows/web_analytics.toml"),
        )
        .expect("web_analytics.toml is valid");
        let field = |name: &str| {
            spec.validation
                .fields
                .iter()
                .position(|f| f.name == name)
                .expect("declared")
        };
        let [pages, sessions, conversions] = &spec.windows[..] else {
            panic!("three windows");
        };
        assert_eq!(pages.group_by, vec![field("page")]);
        assert!(pages.filter.is_some());
        assert_eq!(
            sessions.group_by,
            vec![field("user_id")],
            "the default: the key"
        );
        assert_eq!(
            sessions.aggregates,
            vec![Aggregate::Count, Aggregate::Duration, Aggregate::Bounce]
        );
        assert!(conversions.group_by.is_empty());
        assert!(conversions.value_expr.is_some() && conversions.value.is_none());
        assert_eq!(spec.validation.rules.len(), 3);
        assert_eq!(spec.validation.rules[1].name, "validation.rules[1]");
    }

    #[test]
    fn bad_expressions_and_groupings_are_named() {
        let text = r#"
name = "x"
[input]
topic = "t"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "1s"
idle_timeout = "1s"
filter = "k =="
[validation.fields]
n = "integer"
page = "string"
[[validation.rules]]
field = "n"
ge = 0
[[validation.rules]]
expr = "n > 0 && colour == 'red'"
[[validation.rules]]
expr = "page > 1"
[[windows]]
name = "w"
kind = "tumbling"
size = "1s"
group_by = ["page", "nope", "page"]
filter = "n + 1"
value = "double(n) * 1.5"
aggregates = ["sum", "duration"]
[[windows]]
name = "v"
kind = "tumbling"
size = "1s"
field = "n"
value = "n"
aggregates = ["sum"]
[output]
topic = "o"
dead_letter_topic = "d"
late_topic = "l"
"#;
        let err = PipelineSpec::from_toml("bad.toml", text).expect_err("must fail");
        let all = err.problems.join(
            "
",
        );
        for needle in [
            "`input.filter`: not a valid CEL expression",
            "`validation.rules[1].expr`: refers to `colour` not declared in [validation.fields]",
            "`validation.rules[2].expr`: type error",
            "`windows[0].group_by[1]`: `nope` is not declared",
            "`windows[0].group_by[2]`: `page` is listed twice",
            "`windows[0].filter`: evaluates to int, not bool",
            "`windows[0].value`: evaluates to double",
            "`windows[0].aggregates[1]`: `duration` is an aggregate of session windows only",
            "`windows[1].value`: a window aggregates either a `field` or a `value`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 9, "{all}");
    }

    #[test]
    fn correlation_ids_are_read_and_bad_forms_named() {
        let trades = include_str!("../dataflows/trades.toml");
        let with = |lines: &str| {
            trades.replace(
                "start_from = \"earliest\"",
                &format!("start_from = \"earliest\"\n{lines}"),
            )
        };
        let spec = PipelineSpec::from_toml("t", trades).expect("valid");
        assert_eq!(spec.input.correlation, None);
        let spec = PipelineSpec::from_toml("t", &with("correlation_id = { field = \"trace_id\" }"))
            .expect("valid");
        assert_eq!(
            spec.input.correlation,
            Some(CorrelationSpec {
                source: CorrelationSource::Field("trace_id".into()),
                per_result: CorrelationSpec::DEFAULT_PER_RESULT,
            })
        );
        assert!(
            !spec.validation.fields.iter().any(|f| f.name == "trace_id"),
            "an undeclared correlation field is not required"
        );
        let spec = PipelineSpec::from_toml(
            "t",
            &with("correlation_id = { header = \"traceparent\" }\ncorrelation_ids_per_result = 3"),
        )
        .expect("valid");
        assert_eq!(
            spec.input.correlation,
            Some(CorrelationSpec {
                source: CorrelationSource::Header("traceparent".into()),
                per_result: 3,
            })
        );
        for (lines, needle) in [
            (
                "correlation_id = \"trace_id\"",
                "`input.correlation_id`: expected a table, found a string",
            ),
            (
                "correlation_id = { }",
                "`input.correlation_id`: needs `field",
            ),
            (
                "correlation_id = { field = \"a\", header = \"b\" }",
                "`input.correlation_id`: give `field` or `header`, not both",
            ),
            (
                "correlation_id = { column = \"a\" }",
                "`input.correlation_id.column`: is not a known setting",
            ),
            (
                "correlation_id = { field = \"amount\" }",
                "`input.correlation_id.field`: field `amount` is declared as decimal",
            ),
            (
                "correlation_id = { header = \"\" }",
                "`input.correlation_id.header`: must not be empty",
            ),
            (
                "correlation_id = { field = \"t\" }\ncorrelation_ids_per_result = 300",
                "`input.correlation_ids_per_result`: must be between 0 and 256",
            ),
            (
                "correlation_ids_per_result = 4",
                "`input.correlation_ids_per_result`: has no effect without `correlation_id`",
            ),
        ] {
            let err = PipelineSpec::from_toml("t", &with(lines)).expect_err(lines);
            let all = err.problems.join("\n");
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = r#"
name = "x"
[input]
topic = "t"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = "soon"
idle_timeout = "0s"
[validation.fields]
amount = "money"
[[validation.rules]]
field = "nope"
gt = 0
[[windows]]
name = "w"
kind = "calendar"
aggregates = ["count", "median"]
colour = "blue"
[dedupe]
horizon = "0s"
dead_letters = true
[output]
topic = "o"
late_topic = "l"
"#;
        let err = PipelineSpec::from_toml("bad.toml", text).expect_err("must fail");
        let all = err.problems.join("\n");
        for needle in [
            "`input.max_out_of_orderness`",
            "`input.idle_timeout`: must be greater than zero",
            "`validation.fields.amount`: unknown type `money`",
            "`validation.rules[0].field`: `nope` is not declared",
            "`windows[0].kind`: unknown window kind `calendar`",
            "`windows[0].aggregates[1]`: unknown aggregate `median`",
            "`windows[0].colour`: is not a known setting",
            "`output.dead_letter_topic`: is required",
            "`dedupe.horizon`: must be greater than zero",
            "`dedupe.dead_letters`: is not a known setting",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 10, "{all}");
    }
}
