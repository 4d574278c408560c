//! End-to-end: `emit = "updates"` through Apache Kafka. The trades dataflow with its
//! tumbling window and a session window, both writing changelogs, run with
//! `--stop-at-end`; the committed changelogs are read back with `read_committed`.

mod common;

use std::collections::BTreeMap;

use common::kafka::*;
use common::{Expected, Win, absorb, assert_matches, recompute_deduped, report};

use waterline::output::Topics;
use waterline::pipeline;
use waterline::spec::PipelineSpec;

const SESSIONS: Win = Win {
    name: "trades_sessions",
    size: 600_000,
    slide: 600_000,
    gap: 100,
    grace: 10_000,
    avg_scale: 2,
};

/// Message key → its records in partition order (`None`: a tombstone).
type Changelogs = BTreeMap<(String, Vec<u8>), Vec<Option<serde_json::Value>>>;

#[test]
fn updates_reach_kafka_as_ordered_changelogs_with_null_tombstones() {
    const PARTITIONS: usize = 4;
    let data = trades(77, PARTITIONS, 5_000);
    let (input, out, sess, dlq, late) = (
        unique("trades"),
        unique("windows"),
        unique("sessions"),
        unique("dlq"),
        unique("late"),
    );
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(data);
    produce(&input, &records);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let shipped = std::fs::read_to_string(&path).expect("read");
    let text = shipped.replace("avg_scale = 2\n", "avg_scale = 2\nemit = \"updates\"\n")
        + &format!(
            r#"
[[windows]]
name = "{}"
kind = "session"
gap = "100ms"
max_duration = "10m"
grace = "10s"
field = "amount"
aggregates = ["count", "sum", "min", "max", "avg"]
avg_scale = 2
emit = "updates"
topic = "{sess}"
"#,
            SESSIONS.name
        );
    std::fs::write(&path, &text).expect("write");
    let run = waterline(&[
        "run",
        "--dataflow",
        path.to_str().expect("utf-8 path"),
        "--stop-at-end",
        "-w",
        "2",
    ]);
    assert!(run.status.success(), "waterline run --stop-at-end exits 0");

    let mut logs = Changelogs::new();
    let mut got = Expected::default();
    let mut partitions_of: BTreeMap<(String, Vec<u8>), i32> = BTreeMap::new();
    for (topic, partition, key, payload) in consume_all_records(&[&out, &sess, &dlq, &late]) {
        if topic == dlq || topic == late {
            let role = if topic == dlq { "dead" } else { "late" };
            absorb(
                &mut got,
                role,
                &payload.expect("dead letters and late records have values"),
            );
            continue;
        }
        let key = key.expect("changelog records are keyed");
        assert_ne!(
            payload.as_deref(),
            Some(&[][..]),
            "a tombstone is a null value, not empty"
        );
        let previous = partitions_of.insert((topic.clone(), key.clone()), partition);
        assert!(
            previous.is_none_or(|p| p == partition),
            "one message key, one partition"
        );
        let value = payload.map(|p| serde_json::from_slice(&p).expect("JSON"));
        logs.entry((topic, key)).or_default().push(value);
    }

    // Every changelog ends with its final value, or with a tombstone for a merged-away
    // session; counts never fall while a window is open; finals are the naive results.
    let (mut upserts, mut tombstones) = (0, 0);
    for ((topic, key), steps) in &logs {
        let (last, before) = steps.split_last().expect("non-empty");
        for step in before {
            let v = step
                .as_ref()
                .expect("a tombstone is the last record of its key");
            assert_eq!(
                v["final"], false,
                "{topic} {key:?}: nothing follows a final value"
            );
            upserts += 1;
        }
        let counts: Vec<u64> = before
            .iter()
            .flatten()
            .map(|v| v["count"].as_u64().expect("count"))
            .collect();
        assert!(
            counts.windows(2).all(|c| c[0] < c[1]),
            "{topic} {key:?}: {counts:?}"
        );
        match last {
            None => {
                assert_eq!(topic, &sess, "only sessions are deleted");
                tombstones += 1;
            }
            Some(v) => {
                assert_eq!(
                    v["final"], true,
                    "{topic} {key:?} ends with its final value"
                );
                assert!(!before.is_empty(), "an upsert comes before the final value");
                absorb(&mut got, "window", &serde_json::to_vec(v).expect("JSON"));
            }
        }
    }
    let tumbling = TRADES_WINDOW;
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[tumbling, SESSIONS], TRADES_DEDUPE);
    assert!(
        tombstones > 20,
        "sessions were merged ({tombstones} tombstones)"
    );
    assert_matches(&got, &expected, "updates end-to-end, 2 workers");

    // The same changelogs, record for record and in order, as the in-memory dataflow
    // writes for the same partitions: Kafka's transactions neither drop, repeat nor
    // reorder a step.
    let spec = PipelineSpec::from_toml("updates", &text).expect("valid");
    let topics = Topics::new(&spec, |_| 8);
    let parts = inputs
        .iter()
        .enumerate()
        .map(|(p, rs)| (p as i32, rs.iter().map(|r| r.payload.clone()).collect()))
        .collect();
    let memory = pipeline::run_in_memory(&spec, &topics, parts, 2, 64).expect("completes");
    let mut in_memory = Changelogs::new();
    for r in memory {
        let topic = &topics.names[r.topic as usize];
        if topic == &out || topic == &sess {
            let value =
                (!r.payload.is_empty()).then(|| serde_json::from_slice(&r.payload).expect("JSON"));
            in_memory
                .entry((topic.clone(), r.key.expect("keyed")))
                .or_default()
                .push(value);
        }
    }
    assert!(
        in_memory == logs,
        "the Kafka changelogs equal the in-memory run's"
    );
    report(&format!(
        "updates end-to-end: {} changelogs, {upserts} upserts, {tombstones} tombstones, {} final values equal to the recomputation",
        logs.len(),
        expected.windows.len()
    ));
}
