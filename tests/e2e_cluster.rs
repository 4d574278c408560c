//! One job across several processes, against Apache Kafka (the broker of
//! `tests/common/kafka.rs`): the committed output does not depend on the layout (1 × 4,
//! 2 × 2 and 4 × 1 give the same bytes), and SIGKILL on one process makes the others stop
//! with an error naming it, after which a restart of the whole job is exact.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{Running, assert_matches, recompute_deduped, report};

/// `n` consecutive free ports on 127.0.0.1 for the test in `slot`, below the kernel's
/// ephemeral range and apart from the other tests of this binary.
fn free_ports(slot: u16, n: u16) -> u16 {
    let pid = std::process::id() as u16;
    for attempt in 0..100u16 {
        let base =
            20_000 + (pid.wrapping_mul(17).wrapping_add(attempt * 11) % 300) * 40 + slot * 10;
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in 20000..32000");
}

/// A committed output record, comparable across runs: (topic role, partition, key,
/// payload), with the wall-clock `rejected_at` of dead letters blanked.
type Comparable = (&'static str, i32, Option<Vec<u8>>, Vec<u8>);

fn comparable(out: &str, dlq: &str, late: &str) -> Vec<Comparable> {
    let mut records: Vec<Comparable> = consume_all_records(&[out, dlq, late])
        .into_iter()
        .map(|(topic, partition, key, payload)| {
            let role = role(&topic, out, dlq);
            let mut payload = payload.unwrap_or_default();
            if role == "dead" {
                payload = blank_rejected_at(&payload);
            }
            (role, partition, key, payload)
        })
        .collect();
    records.sort();
    records
}

fn blank_rejected_at(payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(payload.to_vec()).expect("dead letters are JSON");
    let field = "\"rejected_at\":\"";
    let at = text.find(field).expect("a dead letter has rejected_at") + field.len();
    let end = at + text[at..].find('"').expect("a closing quote");
    format!("{}-{}", &text[..at], &text[end..]).into_bytes()
}

fn output_topics(tag: &str) -> (String, String, String) {
    (
        unique(&format!("{tag}-w")),
        unique(&format!("{tag}-d")),
        unique(&format!("{tag}-l")),
    )
}

/// The same 40,000 trades (invalid, late and duplicate records among them) through one
/// process with 4 workers, two processes with 2 each and four processes with 1 each
/// (`waterline cluster`), each a bounded run of its own job: the committed records are
/// the same bytes, and equal the independent recomputation.
#[test]
fn the_committed_output_does_not_depend_on_the_layout() {
    const PARTITIONS: usize = 8;
    let input = unique("layout-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(8080, PARTITIONS, 5_000));
    produce(&input, &records);
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let dir = tempfile::tempdir().expect("temp dir");
    let layouts: [(&str, &str, &str); 3] =
        [("1", "4", "1x4"), ("2", "2", "2x2"), ("4", "1", "4x1")];
    let mut results: Vec<(&str, Vec<Comparable>)> = Vec::new();
    for (slot, (processes, workers, name)) in layouts.into_iter().enumerate() {
        let (out, dlq, late) = output_topics(name);
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).expect("dir");
        let dataflow = trades_dataflow(&sub, &input, &out, &dlq, &late);
        let dataflow = dataflow.to_str().expect("utf-8");
        let started = Instant::now();
        let run = if processes == "1" {
            waterline(&[
                "run",
                "-d",
                dataflow,
                "-w",
                workers,
                "--stop-at-end",
                "--http-listen",
                "off",
            ])
        } else {
            let base = free_ports(slot as u16, 4).to_string();
            waterline(&[
                "cluster",
                "-d",
                dataflow,
                "--processes",
                processes,
                "-w",
                workers,
                "--base-port",
                &base,
                "--stop-at-end",
                "--http-listen",
                "off",
            ])
        };
        assert!(run.status.success(), "the {name} run completes");
        if processes != "1" {
            let stderr = String::from_utf8_lossy(&run.stderr);
            for p in 0..processes.parse().expect("a number") {
                assert!(
                    stderr.contains(&format!("[process {p}]"))
                        && stderr.contains("every process of the job is connected"),
                    "process {p} of {name} ran and met the others"
                );
            }
        }
        let got = comparable(&out, &dlq, &late);
        assert_matches(
            &committed(&out, &dlq, &late),
            &expected,
            &format!("layout {name}"),
        );
        eprintln!(
            "layout {name}: {} records in {:?}",
            got.len(),
            started.elapsed()
        );
        results.push((name, got));
    }
    let (first_name, first) = &results[0];
    for (name, got) in &results[1..] {
        if got != first {
            let i = first
                .iter()
                .zip(got)
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(got.len()));
            panic!(
                "{name} differs from {first_name} ({} vs {} records); first difference at {i}: {:?} vs {:?}",
                got.len(),
                first.len(),
                got.get(i)
                    .map(|r| (r.0, r.1, String::from_utf8_lossy(&r.3).to_string())),
                first
                    .get(i)
                    .map(|r| (r.0, r.1, String::from_utf8_lossy(&r.3).to_string())),
            );
        }
    }
    let by_role: BTreeMap<&str, usize> = first.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.0).or_default() += 1;
        m
    });
    assert!(
        by_role.len() == 3,
        "windows, dead letters and late records: {by_role:?}"
    );
    report(&format!(
        "layout independence: 1x4, 2x2 and 4x1 committed the same {} records byte for byte \
         ({by_role:?}), equal to the recomputation",
        first.len()
    ));
}

/// One process of a job of two (2 workers each), started with `waterline run`.
fn spawn_process(
    process: usize,
    dataflow: &Path,
    hosts: &Path,
    app: &str,
    log: &Path,
    extra: &[&str],
) -> Running {
    Running(
        command(process, dataflow, hosts, app, log, extra)
            .spawn()
            .expect("waterline starts"),
    )
}

fn command(
    process: usize,
    dataflow: &Path,
    hosts: &Path,
    app: &str,
    log: &Path,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waterline"));
    command
        .args(["run", "--dataflow", dataflow.to_str().expect("utf-8")])
        .args([
            "-w",
            "2",
            "--processes",
            "2",
            "--process",
            &process.to_string(),
        ])
        .args([
            "--hosts",
            hosts.to_str().expect("utf-8"),
            "--http-listen",
            "off",
        ])
        .args(extra)
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("WATERLINE_APP_ID", app)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        // A file, not a pipe: an unread pipe would block the run once full.
        .stderr(std::fs::File::create(log).expect("log file"));
    command
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job of two processes × 2 workers runs on 48,000 trades, 60% written up front and
/// the rest while it runs. One process is killed with SIGKILL mid-run (process 1, then on
/// the next run process 0, which decides for the job): the other must stop by itself,
/// promptly, with an error naming the lost process and no panic. Each time the whole job
/// is restarted; a last bounded run (as 1 process × 4 workers: the same total) finishes
/// the input, and the committed output must equal the independent recomputation exactly.
#[test]
fn killing_one_process_stops_the_others_and_a_restart_is_exact() {
    const PARTITIONS: usize = 8;
    const PER_PARTITION: usize = 6_000;
    let input = unique("kill-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(1313, PARTITIONS, PER_PARTITION));
    let cut = PER_PARTITION * 6 / 10;
    let first: Vec<Vec<KeyValue>> = records.iter().map(|p| p[..cut].to_vec()).collect();
    let rest: Vec<Vec<KeyValue>> = records.iter().map(|p| p[cut..].to_vec()).collect();
    produce(&input, &first);

    let dir = tempfile::tempdir().expect("temp dir");
    let (out, dlq, late) = output_topics("kill");
    // Created up front (as the dataflow would, with its 8 partitions), so that the test can
    // look at them before the job has started.
    for t in [&out, &dlq, &late] {
        create_topic(t, 8);
    }
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    // No wall-clock idleness: every partition receives data until the end.
    set_idle_timeout(&dataflow, "1h");
    let base = free_ports(5, 2);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{base}\n127.0.0.1:{}\n", base + 1),
    )
    .expect("write");
    let app = unique("kill-app");
    let logs = [dir.path().join("p0.log"), dir.path().join("p1.log")];
    let log_of = |p: usize| std::fs::read_to_string(&logs[p]).unwrap_or_default();

    let appender = {
        let input = input.clone();
        std::thread::spawn(move || {
            for slice in 0..4 {
                let part: Vec<Vec<KeyValue>> = rest
                    .iter()
                    .map(|p| {
                        let n = p.len().div_ceil(4);
                        p.iter().skip(slice * n).take(n).cloned().collect()
                    })
                    .collect();
                produce(&input, &part);
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
    };
    let mut detections = Vec::new();
    for victim in [1usize, 0] {
        let mut children: Vec<Running> = (0..2)
            .map(|p| spawn_process(p, &dataflow, &hosts, &app, &logs[p], &[]))
            .collect();
        // Mid-run: after the job has committed output (or a few seconds).
        let deadline = Instant::now() + Duration::from_secs(20);
        let before = committed(&out, &dlq, &late).windows.len();
        while Instant::now() < deadline && committed(&out, &dlq, &late).windows.len() <= before {
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(700));
        for (p, c) in children.iter_mut().enumerate() {
            assert!(
                c.try_wait().expect("wait").is_none(),
                "process {p} is still running before the kill:\n{}",
                log_of(p)
            );
        }
        let survivor = 1 - victim;
        children[victim].kill().expect("SIGKILL");
        let killed = Instant::now();
        children[victim].wait().expect("wait");
        let status = wait_with_deadline(&mut children[survivor], Duration::from_secs(30));
        let Some(status) = status else {
            children[survivor].kill().expect("kill");
            panic!(
                "process {survivor} did not stop within 30 s of losing process {victim}:\n{}",
                log_of(survivor)
            );
        };
        let took = killed.elapsed();
        let text = log_of(survivor);
        assert!(
            !status.success(),
            "process {survivor} fails when it loses process {victim}:\n{text}"
        );
        let lost = format!(
            "process {victim} at 127.0.0.1:{} was lost",
            base + victim as u16
        );
        assert!(text.contains(&lost), "{lost:?} in:\n{text}");
        assert!(!text.contains("panicked"), "no panic:\n{text}");
        detections.push(took);
    }
    appender.join().expect("the appender finished");
    // The last restart uses another layout with the same total (1 process x 4 workers):
    // workers keep their global indices, so it resumes every worker's commits.
    let last = waterline_as(
        &app,
        &[
            "run",
            "--dataflow",
            dataflow.to_str().expect("utf-8"),
            "-w",
            "4",
            "--stop-at-end",
            "--http-listen",
            "off",
        ],
    );
    assert!(
        last.status.success(),
        "the final bounded run (1 x 4) completes"
    );
    assert!(
        String::from_utf8_lossy(&last.stderr).contains("resuming from committed progress"),
        "it resumed the job's progress"
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    let got = committed(&out, &dlq, &late);
    assert_matches(&got, &expected, "after killing one process of two, twice");
    let total: usize = inputs.iter().map(Vec::len).sum();
    report(&format!(
        "kill one process: SIGKILL on process 1, then on process 0; the survivor stopped after \
         {:?} and {:?} naming the lost process; after restarting the whole job (last as 1 x 4), \
         the committed output of {total} records is an exact match with the recomputation ({} windows, {} \
         dead letters, {} late records, nothing twice, nothing missing)",
        detections[0],
        detections[1],
        expected.windows.len(),
        expected.dead.len(),
        expected.late.len()
    ));
}

/// A failure that running again can fix (a commit whose transaction the broker aborted,
/// injected on process 0 only) restarts every process of the job in-process: process 1
/// stops because process 0 failed, both meet again and finish, and the output is exact.
#[test]
fn a_retriable_failure_on_one_process_restarts_the_whole_job_in_process() {
    const PARTITIONS: usize = 4;
    let input = unique("retry-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(4444, PARTITIONS, 6_000));
    produce(&input, &records);
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, dlq, late) = output_topics("retry");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let config = dir.path().join("fast-commits.toml");
    std::fs::write(&config, "[processing]\ncommit_interval = \"20ms\"\n").expect("write");
    let base = free_ports(6, 2);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{base}\n127.0.0.1:{}\n", base + 1),
    )
    .expect("write");
    let app = unique("retry-app");
    let logs = [dir.path().join("p0.log"), dir.path().join("p1.log")];
    let extra = [
        "--until",
        "end",
        "--config",
        config.to_str().expect("utf-8"),
    ];
    let mut children: Vec<Running> = (0..2)
        .map(|p| {
            let mut c = command(p, &dataflow, &hosts, &app, &logs[p], &extra);
            if p == 0 {
                c.env("WATERLINE_FAULT", "commit-fails:6");
            }
            Running(c.spawn().expect("waterline starts"))
        })
        .collect();
    let log_of = |p: usize| std::fs::read_to_string(&logs[p]).unwrap_or_default();
    for (p, c) in children.iter_mut().enumerate() {
        let status = wait_with_deadline(c, Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "process {p} completes despite the failed commit ({status:?}):\n{}",
            log_of(p)
        );
    }
    let restarts = |p: usize| {
        log_of(p)
            .matches("restarting from the committed progress")
            .count()
    };
    assert_eq!(
        (restarts(0), restarts(1)),
        (1, 1),
        "one restart each:\n{}\n{}",
        log_of(0),
        log_of(1)
    );
    assert!(
        log_of(1).contains(&format!("process 0 at 127.0.0.1:{base} failed")),
        "process 1 restarted because process 0 failed:\n{}",
        log_of(1)
    );
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert_matches(
        &committed(&out, &dlq, &late),
        &expected,
        "after an in-process restart of both processes",
    );
}

/// SIGTERM on one process of a running job is a clean stop of the whole job: both
/// processes flush what they committed and exit 0, and nothing is written twice.
#[test]
fn sigterm_on_one_process_stops_every_process_cleanly() {
    const PARTITIONS: usize = 4;
    let input = unique("stop-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, _) = split(trades(99, PARTITIONS, 4_000));
    produce(&input, &records);
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, dlq, late) = output_topics("stop");
    for t in [&out, &dlq, &late] {
        create_topic(t, 8);
    }
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let base = free_ports(7, 2);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{base}\n127.0.0.1:{}\n", base + 1),
    )
    .expect("write");
    let app = unique("stop-app");
    let logs = [dir.path().join("p0.log"), dir.path().join("p1.log")];
    let log_of = |p: usize| std::fs::read_to_string(&logs[p]).unwrap_or_default();
    let mut children: Vec<Running> = (0..2)
        .map(|p| spawn_process(p, &dataflow, &hosts, &app, &logs[p], &[]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&out, &dlq, &late).windows.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the job commits output:\n{}\n{}",
            log_of(0),
            log_of(1)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = Command::new("kill")
        .args(["-TERM", &children[1].id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    for (p, c) in children.iter_mut().enumerate() {
        let status = wait_with_deadline(c, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "process {p} stops cleanly (exit 0) after SIGTERM on process 1 ({status:?}):\n{}",
            log_of(p)
        );
    }
    // Nothing twice (`committed` panics on a duplicate).
    let got = committed(&out, &dlq, &late);
    assert!(!got.windows.is_empty());
}
