//! Golden tests: small inputs whose outputs are worked out by hand from the documented
//! rules, through the real dataflow on in-memory partitions.

use waterline::output::Topics;
use waterline::pipeline;
use waterline::spec::PipelineSpec;

/// A window result: (start, end, count, sum).
type WindowRow = (u64, u64, u64, String);
/// A late record: (event time, the window it missed).
type Late = (u64, u64);

/// Runs `window` (a `[[windows]]` body) with out-of-orderness 0 over one partition of
/// `(time, value)` events; returns the window results as (start, end, count, sum) and the
/// late records as (time, window start).
fn run(window: &str, events: &[(u64, &str)]) -> (Vec<WindowRow>, Vec<Late>) {
    let text = format!(
        r#"
name = "golden"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = 0
idle_timeout = "1h"
[validation.fields]
v = "decimal"
[[windows]]
name = "w"
field = "v"
aggregates = ["count", "sum"]
{window}
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
"#
    );
    let spec = PipelineSpec::from_toml("golden", &text).expect("valid");
    let topics = Topics::new(&spec, |_| 1);
    let payloads = events
        .iter()
        .enumerate()
        .map(|(i, (t, v))| {
            Some(format!(r#"{{"id":"{i}","ts":{t},"k":"K","v":"{v}"}}"#).into_bytes())
        })
        .collect();
    let records =
        pipeline::run_in_memory(&spec, &topics, vec![(0, payloads)], 1, 1).expect("completes");
    let mut windows = Vec::new();
    let mut late = Vec::new();
    for r in records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
        match topics.names[r.topic as usize].as_str() {
            "out" => windows.push((
                v["window_start_ms"].as_u64().expect("start"),
                v["window_end_ms"].as_u64().expect("end"),
                v["count"].as_u64().expect("count"),
                v["sum"].as_str().expect("sum").to_string(),
            )),
            "late" => late.push((
                v["event_time_ms"].as_u64().expect("time"),
                v["window_start_ms"].as_u64().expect("start"),
            )),
            other => panic!("unexpected output to {other}: {v}"),
        }
    }
    windows.sort();
    late.sort();
    (windows, late)
}

#[test]
fn a_record_exactly_at_a_window_end_belongs_to_the_next_window() {
    let (windows, late) = run(
        r#"kind = "tumbling"
size = 10"#,
        &[(0, "1"), (9, "2"), (10, "4")],
    );
    assert_eq!(
        windows,
        vec![(0, 10, 2, "3".into()), (10, 20, 1, "4".into())]
    );
    assert!(late.is_empty());
}

#[test]
fn a_window_closes_exactly_at_end_plus_grace() {
    // Grace 5: [0, 10) closes when the watermark reaches 15. At watermark 14 a record
    // for it still counts; at watermark 15 one is late.
    let (windows, late) = run(
        r#"kind = "tumbling"
size = 10
grace = 5"#,
        &[(14, "1"), (3, "10"), (15, "1"), (4, "100")],
    );
    assert_eq!(
        windows,
        vec![(0, 10, 1, "10".into()), (10, 20, 2, "2".into())]
    );
    assert_eq!(late, vec![(4, 0)]);
}

#[test]
fn a_hopping_record_counts_in_its_open_windows_and_is_late_only_when_all_closed() {
    // Size 10, slide 5: 9 is in [0, 10) and [5, 15). After 12 (watermark 12), [0, 10) has
    // closed, [5, 15) has not: 9 counts in [5, 15) only and is not a late record. After 20,
    // 4 is in [0, 10) alone, closed: late.
    let (windows, late) = run(
        r#"kind = "hopping"
size = 10
slide = 5"#,
        &[(12, "1"), (9, "2"), (20, "4"), (4, "8")],
    );
    assert_eq!(
        windows,
        vec![
            (5, 15, 2, "3".into()),
            (10, 20, 1, "1".into()),
            (15, 25, 1, "4".into()),
            (20, 30, 1, "4".into()),
        ]
    );
    assert_eq!(late, vec![(4, 0)]);
}

#[test]
fn kafka_streams_session_example_merges_when_the_gap_is_filled() {
    // Gap 5: records at 10, 12 and 20 make [10, 17) and [20, 25) (Kafka Streams writes
    // them [10, 12] and [20, 20]); a record at 16 then merges them into [10, 25). Grace 10
    // keeps the first session open until 16 arrives.
    let (windows, late) = run(
        r#"kind = "session"
gap = 5
max_duration = 1000
grace = 10"#,
        &[(10, "1"), (12, "2"), (20, "4"), (16, "8")],
    );
    assert_eq!(windows, vec![(10, 25, 4, "15".into())]);
    assert!(late.is_empty());
    // Without the record at 16, two sessions.
    let (windows, _) = run(
        r#"kind = "session"
gap = 5
max_duration = 1000
grace = 10"#,
        &[(10, "1"), (12, "2"), (20, "4")],
    );
    assert_eq!(
        windows,
        vec![(10, 17, 2, "3".into()), (20, 25, 1, "4".into())]
    );
}

#[test]
fn touching_sessions_merge_and_max_duration_cuts_them() {
    // [10, 15) and [15, 20) touch: one session. With max_duration 20, a record at 18 opens
    // [18, 20) (cut at 20) and one at 21 opens [21, 26) in the next span: two sessions,
    // though 21 is within the gap of 18.
    let (windows, _) = run(
        r#"kind = "session"
gap = 5
max_duration = 20"#,
        &[(10, "1"), (15, "2"), (18, "4"), (21, "8")],
    );
    assert_eq!(
        windows,
        vec![(10, 20, 3, "7".into()), (21, 26, 1, "8".into())]
    );
}

#[test]
fn a_session_record_is_late_once_its_time_plus_grace_is_below_the_watermark() {
    // Grace 3: after 20 (watermark 20), 17 is on time (17 + 3 is not below 20) and joins
    // the session; 16 arrives after 21 (watermark 21): 16 + 3 < 21, late.
    let (windows, late) = run(
        r#"kind = "session"
gap = 5
max_duration = 1000
grace = 3"#,
        &[(15, "1"), (20, "2"), (17, "4"), (21, "8"), (16, "16")],
    );
    assert_eq!(windows, vec![(15, 26, 4, "15".into())]);
    assert_eq!(late, vec![(16, 16)]);
}

/// One changelog record: (start, end, count, final), or `None` for a tombstone.
type Change = Option<(u64, u64, u64, bool)>;

/// Runs `window` with `emit = "updates"` (out-of-orderness 0, one partition) over
/// `(time, key)` events of value 1; returns each message key's records in order.
fn run_updates(window: &str, events: &[(u64, &str)]) -> Vec<((String, String, u64), Vec<Change>)> {
    let text = format!(
        r#"
name = "golden"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = 0
idle_timeout = "1h"
[validation.fields]
v = "decimal"
[[windows]]
name = "w"
aggregates = ["count"]
emit = "updates"
{window}
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
"#
    );
    let spec = PipelineSpec::from_toml("golden", &text).expect("valid");
    let topics = Topics::new(&spec, |_| 1);
    let payloads = events
        .iter()
        .enumerate()
        .map(|(i, (t, k))| Some(format!(r#"{{"id":"{i}","ts":{t},"k":"{k}","v":1}}"#).into_bytes()))
        .collect();
    let records =
        pipeline::run_in_memory(&spec, &topics, vec![(0, payloads)], 1, 1).expect("completes");
    let mut log: std::collections::BTreeMap<(String, String, u64), Vec<Change>> =
        Default::default();
    for r in records {
        assert_eq!(
            topics.names[r.topic as usize], "out",
            "nothing is late or invalid"
        );
        let id = serde_json::from_slice(r.key.as_deref().expect("keyed")).expect("[w, key, start]");
        let change = (!r.payload.is_empty()).then(|| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
            (
                v["window_start_ms"].as_u64().expect("start"),
                v["window_end_ms"].as_u64().expect("end"),
                v["count"].as_u64().expect("count"),
                v["final"].as_bool().expect("final"),
            )
        });
        log.entry(id).or_default().push(change);
    }
    log.into_iter().collect()
}

fn id(key: &str, start: u64) -> (String, String, u64) {
    ("w".to_string(), key.to_string(), start)
}

#[test]
fn updates_of_a_tumbling_window_then_its_final_value() {
    let log = run_updates(
        r#"kind = "tumbling"
size = 10"#,
        &[(1, "K"), (3, "K"), (12, "K")],
    );
    assert_eq!(
        log,
        vec![
            (
                id("K", 0),
                vec![
                    Some((0, 10, 1, false)),
                    Some((0, 10, 2, false)),
                    Some((0, 10, 2, true))
                ]
            ),
            (
                id("K", 10),
                vec![Some((10, 20, 1, false)), Some((10, 20, 1, true))]
            ),
        ]
    );
    // An update interval of 5 gathers the changes at 1 and 3 into one step, at 5.
    let log = run_updates(
        r#"kind = "tumbling"
size = 10
update_interval = 5"#,
        &[(1, "K"), (3, "K"), (12, "K")],
    );
    assert_eq!(
        log[0],
        (
            id("K", 0),
            vec![Some((0, 10, 2, false)), Some((0, 10, 2, true))]
        )
    );
}

#[test]
fn kafka_streams_session_example_in_updates_mode_retracts_the_merged_session() {
    // Gap 5, grace 10: 10 and 12 make [10, 17), 20 makes [20, 25); X at 21 moves the
    // watermark to 21; 16, read then, merges both into [10, 25): the session that started
    // at 20 is deleted with a tombstone and the one at 10 updated. Then the finals.
    let log = run_updates(
        r#"kind = "session"
gap = 5
max_duration = 1000
grace = 10"#,
        &[(10, "K"), (12, "K"), (20, "K"), (21, "X"), (16, "K")],
    );
    assert_eq!(
        log,
        vec![
            (
                id("K", 10),
                vec![
                    Some((10, 15, 1, false)),
                    Some((10, 17, 2, false)),
                    Some((10, 25, 4, false)),
                    Some((10, 25, 4, true)),
                ]
            ),
            (id("K", 20), vec![Some((20, 25, 1, false)), None]),
            (
                id("X", 21),
                vec![Some((21, 26, 1, false)), Some((21, 26, 1, true))]
            ),
        ]
    );
}
