//! Prompt commits: while a run is live, the final results of a tumbling or hopping window
//! are committed as soon as they are final, without waiting for the commit interval; a
//! session window's keep to the interval. And while it is live, every final output is
//! written as soon as it is final, into the commit being filled, not when that commit
//! starts.
//!
//! Each run reads two partitions of one event every 50 ms over 10 s of event time. One
//! partition stalls at its middle for 2 s, reporting that it is caught up, as a Kafka
//! partition read to its end does, and holds the frontier there; the other is read to its
//! end. The commit interval is 4 s, longer than the whole run, so a commit before the
//! last one (at the end of the input) can only be a prompt one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use waterline::output::Topics;
use waterline::pipeline::{self, MemoryRun};
use waterline::progress::Recovery;
use waterline::sink::memory::Committed;
use waterline::spec::PipelineSpec;

const START_MS: u64 = 1_700_000_000_000;
const PER_PARTITION: u64 = 200;
const STEP_MS: u64 = 50;

fn spec(window: &str) -> PipelineSpec {
    let text = format!(
        r#"
name = "prompt"
[input]
topic = "in"
event_time_field = "ts"
key_field = "k"
id_field = "id"
max_out_of_orderness = 0
idle_timeout = "1h"
[validation.fields]
v = "decimal"
[output]
topic = "out"
dead_letter_topic = "dlq"
late_topic = "late"
partitions = 1
[[windows]]
name = "w"
{window}
grace = 0
field = "v"
aggregates = ["count"]
topic = "out-w"
"#
    );
    PipelineSpec::from_toml("prompt", &text).expect("the test dataflow is valid")
}

/// The committed progress records of one run, in commit order.
fn commits(window: &str) -> Vec<u64> {
    run(window).progress.iter().map(|p| p.frontier).collect()
}

/// What one run committed. Record 10 of partition 1 is invalid: its dead letter is final
/// as soon as the frontier passes it, long before the stall ends.
fn run(window: &str) -> Committed {
    let spec = spec(window);
    let topics = Topics::new(&spec, |_| 1);
    let partitions: Vec<(i32, Vec<Option<Vec<u8>>>)> = (0..2)
        .map(|p| {
            let records = (0..PER_PARTITION)
                .map(|i| {
                    let ts = START_MS + i * STEP_MS;
                    let v = if (p, i) == (1, 10) {
                        "not a number"
                    } else {
                        "1"
                    };
                    Some(format!(r#"{{"id":"{p}-{i}","ts":{ts},"k":"a","v":"{v}"}}"#).into_bytes())
                })
                .collect();
            (p, records)
        })
        .collect();
    let run = MemoryRun {
        workers: 1,
        chunk: 3,
        recovery: Recovery::fresh(1),
        fail_after_commits: None,
        commit_interval: Duration::from_secs(4),
        stalls: vec![(0, PER_PARTITION as usize / 2, Duration::from_secs(2))],
    };
    let committed = Arc::new(Mutex::new(Committed::default()));
    pipeline::run_in_memory_with(&spec, &topics, partitions, &run, Arc::clone(&committed))
        .expect("the run completes");
    let c = std::mem::take(&mut *committed.lock().expect("lock"));
    let windows = c
        .records
        .iter()
        .filter(|r| topics.names[r.topic as usize] == "out-w")
        .count();
    assert!(
        windows > 5,
        "{window}: window results were committed ({windows})"
    );
    c
}

#[test]
fn a_live_run_commits_tumbling_and_hopping_results_once_final() {
    for window in [
        "kind = \"tumbling\"\nsize = 1000",
        "kind = \"hopping\"\nsize = 2000\nslide = 500",
    ] {
        let frontiers = commits(window);
        // The stalled partition holds the frontier near the middle of the event time.
        let middle = START_MS + PER_PARTITION / 2 * STEP_MS;
        assert!(
            frontiers.len() >= 2 && frontiers[0] <= middle,
            "{window}: a commit while the partition stalled, before the 4 s interval \
             (frontiers {frontiers:?})"
        );
        assert_eq!(
            frontiers.last(),
            Some(&u64::MAX),
            "{window}: the run completed"
        );
    }
}

#[test]
fn session_results_wait_for_the_commit_interval() {
    let frontiers = commits("kind = \"session\"\ngap = 300\nmax_duration = 1000");
    assert_eq!(
        frontiers,
        vec![u64::MAX],
        "one commit, at the end of the input: the run is shorter than the interval"
    );
}

#[test]
fn a_live_run_writes_outputs_once_final_not_at_the_commit() {
    // Session windows: no prompt commit, so the one commit is at the end of the input,
    // after the 2 s stall. The dead letter was final from the stall's start.
    let window = "kind = \"session\"\ngap = 300\nmax_duration = 1000";
    let topics = Topics::new(&spec(window), |_| 1);
    let c = run(window);
    let dead = c
        .records
        .iter()
        .filter(|r| topics.names[r.topic as usize] == "dlq")
        .count();
    assert_eq!(c.progress.len(), 1, "one commit: {:?}", c.first_written);
    assert!(dead >= 1, "the dead letter was committed");
    assert!(
        c.first_written[0] >= Duration::from_secs(1),
        "the dead letter went to the writer while the partition stalled, {:?} before the \
         commit (not when the commit started)",
        c.first_written[0]
    );
}
