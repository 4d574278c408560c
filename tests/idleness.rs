//! Idleness when every partition goes quiet at once.
//!
//! One worker reads two partitions whose event times run at different speeds. Both are
//! read up to their middle in one step, then both stall for 3 s, longer than the 200 ms
//! idle timeout, so they turn idle at the same step. Nothing holds the watermark back
//! then: it must go to the greatest watermark either partition reached, as Flink's
//! watermark valve does when every channel is idle, so the windows the faster partition
//! passed close during the stall. Left at the slower partition's watermark, they would
//! wait for new data.
//!
//! After the stall the slower partition goes on from where it stopped: the records whose
//! window closed at or before that greatest watermark are late (the partition was idle
//! and the watermark moved on without it), the rest count. Both are recomputed here from
//! the records alone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waterline::output::{Topics, WindowResult};
use waterline::pipeline::{self, MemoryRun};
use waterline::progress::Recovery;
use waterline::sink::memory::Committed;
use waterline::spec::PipelineSpec;

const START_MS: u64 = 1_700_000_000_000;
const PER_PARTITION: u64 = 100;
/// Where both partitions stall.
const STALL_AT: u64 = PER_PARTITION / 2;
const WINDOW_MS: u64 = 1_000;
/// Partition `p`'s record `i` is at `START_MS + i * STEP_MS[p]`.
const STEP_MS: [u64; 2] = [100, 50];

const SPEC: &str = r#"
name = "idle"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = 0
idle_timeout = "200ms"
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
partitions = 1
[[windows]]
name = "w"
kind = "tumbling"
size = 1000
grace = 0
aggregates = ["count"]
topic = "out-w"
"#;

fn time(p: usize, i: u64) -> u64 {
    START_MS + i * STEP_MS[p]
}

#[test]
fn partitions_idle_together_release_the_watermark_to_the_greatest() {
    let spec = PipelineSpec::from_toml("idle", SPEC).expect("the test dataflow is valid");
    let topics = Topics::new(&spec, |_| 1);
    let partitions: Vec<(i32, Vec<Option<Vec<u8>>>)> = (0..2)
        .map(|p| {
            let records = (0..PER_PARTITION)
                .map(|i| {
                    let ts = time(p, i);
                    Some(format!(r#"{{"id":"{p}-{i}","ts":{ts},"k":"a"}}"#).into_bytes())
                })
                .collect();
            (p as i32, records)
        })
        .collect();
    let run = MemoryRun {
        workers: 1,
        // Each partition up to its stall in one read: both turn idle at the same step.
        chunk: 1_000,
        recovery: Recovery::fresh(1),
        fail_after_commits: None,
        commit_interval: Duration::from_millis(100),
        stalls: (0..2)
            .map(|p| (p, STALL_AT as usize, Duration::from_secs(3)))
            .collect(),
    };
    let committed = Arc::new(Mutex::new(Committed::default()));
    pipeline::run_in_memory_with(&spec, &topics, partitions, &run, Arc::clone(&committed))
        .expect("the run completes");
    let c = std::mem::take(&mut *committed.lock().expect("lock"));

    // The naive recomputation. Before the stall each partition's watermark is its last
    // time read (no out-of-orderness allowed); idle together, the watermark is the greater.
    let released = time(0, STALL_AT - 1).max(time(1, STALL_AT - 1));
    assert!(
        released > time(1, STALL_AT - 1) + WINDOW_MS,
        "the test needs windows between the two partitions' watermarks"
    );
    let mut expected_late = Vec::new();
    let mut expected_counts: BTreeMap<u64, u64> = BTreeMap::new();
    for p in 0..2 {
        for i in 0..PER_PARTITION {
            let t = time(p, i);
            let start = t - (t - START_MS) % WINDOW_MS;
            // Partition 0 runs ahead of the released watermark: nothing of it is late.
            if p == 1 && i >= STALL_AT && start + WINDOW_MS <= released {
                expected_late.push(format!("{p}-{i}"));
            } else {
                *expected_counts.entry(start).or_default() += 1;
            }
        }
    }

    let on = |name: &str| {
        c.records
            .iter()
            .filter(|r| topics.names[r.topic as usize] == name)
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).expect("JSON"))
            .collect::<Vec<_>>()
    };
    let mut late: Vec<String> = on("late")
        .iter()
        .map(|v| {
            v["event"]["id"]
                .as_str()
                .expect("the late record's id")
                .to_string()
        })
        .collect();
    late.sort_by_key(|id| id.split('-').nth(1).and_then(|i| i.parse::<u64>().ok()));
    assert_eq!(
        late, expected_late,
        "partition 1's records behind the released watermark are late, and only those"
    );
    let results: Vec<(u64, u64)> = on("out-w")
        .into_iter()
        .map(|v| {
            let r: WindowResult = serde_json::from_value(v).expect("a window result");
            (r.window_start_ms, r.count.expect("count"))
        })
        .collect();
    let counts: BTreeMap<u64, u64> = results.iter().copied().collect();
    assert_eq!(
        counts.len(),
        results.len(),
        "one result per window: {results:?}"
    );
    assert_eq!(counts, expected_counts, "every other record counts, once");
    assert!(c.progress.last().is_some_and(|p| p.frontier == u64::MAX));
}
