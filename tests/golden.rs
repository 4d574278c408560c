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
