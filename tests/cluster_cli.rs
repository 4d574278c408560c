//! Start-up of a job of several processes, before any broker is contacted: bad cluster
//! flags and hosts files name the flag, an unreachable peer is named after
//! `--cluster-timeout` instead of a hang, and a peer that runs another layout is refused
//! saying what differs.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DATAFLOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/trades.toml");

fn waterline(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_waterline"))
        .args(args)
        .env("NO_COLOR", "1")
        // Never reached: the cluster checks come first.
        .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .expect("the binary runs");
    eprintln!(
        "$ waterline {}\n--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `n` consecutive free ports on 127.0.0.1 for the test in `slot`: below the kernel's
/// ephemeral range (so no port-0 bind elsewhere takes them), and apart from the other
/// tests of this binary, which run at the same time.
fn free_ports(slot: u16, n: u16) -> Vec<u16> {
    let pid = std::process::id() as u16;
    for attempt in 0..100u16 {
        let base = 20_000 + (pid.wrapping_mul(31).wrapping_add(attempt * 7) % 300) * 40 + slot * 10;
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base..base + n).collect();
        }
    }
    panic!("no {n} free ports in 20000..32000");
}

fn hosts_file(dir: &std::path::Path, ports: &[u16]) -> String {
    let path = dir.join("hosts.txt");
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&path, text).expect("write the hosts file");
    path.to_str().expect("utf-8").to_string()
}

#[test]
fn bad_cluster_flags_name_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = hosts_file(dir.path(), &free_ports(0, 2));
    let cases: [(&[&str], &str); 5] = [
        (
            &["-n", "2", "-p", "2", "--hosts", &hosts],
            "--process 2 is not below --processes 2",
        ),
        (&["-p", "1"], "--process 1 is not below --processes 1"),
        (&["-n", "2", "--hosts", &hosts], "--process is required"),
        (&["-n", "2", "-p", "0"], "--hosts is required"),
        (
            &["-n", "3", "-p", "0", "--hosts", &hosts],
            "lists 2 addresses, and --processes is 3",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["run", "-d", DATAFLOW, "--http-listen", "off"];
        args.extend(flags);
        let out = waterline(&args);
        assert!(!out.status.success(), "{flags:?} is refused");
        assert!(
            stderr(&out).contains(needle),
            "{flags:?}: {needle:?} in {}",
            stderr(&out)
        );
    }
    let duplicate = dir.path().join("dup.txt");
    std::fs::write(&duplicate, "10.0.0.1:7000\n# a comment\n10.0.0.1:7000\n").expect("write");
    let out = waterline(&[
        "run",
        "-d",
        DATAFLOW,
        "-n",
        "2",
        "-p",
        "0",
        "--hosts",
        duplicate.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("--hosts") && text.contains("line 3") && text.contains("listed twice"),
        "{text}"
    );
    let out = waterline(&["cluster", "-d", DATAFLOW, "-n", "2", "--hosts", &hosts]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("sets --process, --hosts and --listen"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_peer_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(1, 3);
    let hosts = hosts_file(dir.path(), &ports);
    let started = Instant::now();
    // Process 1 connects to process 0 and waits for process 2; neither runs.
    let out = waterline(&[
        "run",
        "-d",
        DATAFLOW,
        "-n",
        "3",
        "-p",
        "1",
        "--hosts",
        &hosts,
        "--cluster-timeout",
        "2s",
        "--http-listen",
        "off",
    ]);
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    assert!(
        elapsed < Duration::from_secs(20),
        "it gave up after the timeout, not later ({elapsed:?})"
    );
    let text = stderr(&out);
    for needle in [
        format!("process 0 at 127.0.0.1:{} not reachable", ports[0]),
        format!(
            "process 2 at 127.0.0.1:{} has not connected to this process at 127.0.0.1:{}",
            ports[2], ports[1]
        ),
        "within 2s (--cluster-timeout)".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} in {text}");
    }
}

#[test]
fn a_peer_with_another_layout_is_refused_saying_what_differs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2, 2);
    let hosts = hosts_file(dir.path(), &ports);
    let spawn = |process: &str, workers: &str| {
        Command::new(env!("CARGO_BIN_EXE_waterline"))
            .args([
                "run", "-d", DATAFLOW, "-w", workers, "-n", "2", "-p", process,
            ])
            .args([
                "--hosts",
                &hosts,
                "--cluster-timeout",
                "20s",
                "--http-listen",
                "off",
            ])
            .env("NO_COLOR", "1")
            .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs")
    };
    let first = spawn("0", "2");
    let second = spawn("1", "1");
    let first = first.wait_with_output().expect("process 0 ends");
    let second = second.wait_with_output().expect("process 1 ends");
    assert!(!first.status.success() && !second.status.success());
    let text = stderr(&first);
    assert!(
        text.contains(&format!(
            "process 1 at 127.0.0.1:{} does not belong to this job: its --workers is 1 and \
             this process's is 2",
            ports[1]
        )),
        "{text}"
    );
    let text = stderr(&second);
    assert!(text.contains("its --workers is 2"), "{text}");
}
