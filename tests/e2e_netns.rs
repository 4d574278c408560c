//! Two hosts for real: each process of a job runs in a network namespace of its own
//! (`ip netns`), with a veth pair to a bridge in the root namespace, and the processes
//! reach each other and the broker only over those addresses (neither can reach the
//! other's loopback). The broker is one of the test's own (`scripts/kafka.sh` with
//! `KAFKA_HOST` = the bridge's address, ports 19292/19293, data under the target
//! directory), so the shared broker is not disturbed.
//!
//! 1. A bounded run of 2 processes × 2 workers; the committed output must equal the
//!    independent recomputation.
//! 2. A host lost without a goodbye: the link of one namespace is cut under a running job
//!    (no FIN, no RST). The other process must stop within the peer timeout with an error
//!    naming the lost process; after the link is back, a restart of the whole job finishes
//!    the input exactly.
//!
//! Needs root and `ip` (iproute2): without them the test fails saying so, unless
//! `WATERLINE_SKIP_NETNS=1` is set. Namespaces, links and the broker are removed also when
//! the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{Running, assert_matches, recompute_deduped, report};

const BROKER_PORT: u16 = 19292;
const CONTROLLER_PORT: u16 = 19293;
const PEER_PORT: u16 = 7000;

/// Runs `ip` with `args`; panics with its output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` with `args`, ignoring failures (clean-up of what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Two network namespaces on a bridge; removed when dropped.
struct Hosts {
    bridge: String,
    namespaces: [String; 2],
    /// Each namespace's end of its veth pair.
    links: [String; 2],
    /// The bridge's address (the root namespace, where the broker listens).
    gateway: String,
    /// Each namespace's address.
    addresses: [String; 2],
}

impl Hosts {
    fn create() -> Hosts {
        let id = std::process::id() % 100_000;
        let subnet = format!("10.77.{}", std::process::id() % 250);
        let hosts = Hosts {
            bridge: format!("wl{id}br"),
            namespaces: [format!("wl-{id}-h0"), format!("wl-{id}-h1")],
            links: [format!("wl{id}n0"), format!("wl{id}n1")],
            gateway: format!("{subnet}.1"),
            addresses: [format!("{subnet}.2"), format!("{subnet}.3")],
        };
        hosts.remove();
        ip(&["link", "add", &hosts.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.gateway),
            "dev",
            &hosts.bridge,
        ]);
        ip(&["link", "set", &hosts.bridge, "up"]);
        for i in 0..2 {
            let (ns, inner) = (&hosts.namespaces[i], &hosts.links[i]);
            let outer = format!("wl{id}h{i}");
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", inner]);
            ip(&["link", "set", inner, "netns", ns]);
            ip(&["link", "set", &outer, "master", &hosts.bridge]);
            ip(&["link", "set", &outer, "up"]);
            let address = format!("{}/24", hosts.addresses[i]);
            ip(&["-n", ns, "addr", "add", &address, "dev", inner]);
            ip(&["-n", ns, "link", "set", inner, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn remove(&self) {
        for ns in &self.namespaces {
            // Deleting a namespace deletes the veth pair in it.
            ip_quiet(&["netns", "del", ns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }

    /// Cuts (or restores) namespace `i`'s link, as a host that vanishes: no FIN, no RST.
    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.namespaces[i],
            "link",
            "set",
            &self.links[i],
            state,
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The test's broker on the bridge's address; stopped and deleted when dropped.
struct Broker {
    host: String,
    dir: PathBuf,
}

impl Broker {
    fn script(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(action)
            .env("KAFKA_HOST", &self.host)
            .env("KAFKA_PORT", BROKER_PORT.to_string())
            .env("KAFKA_CONTROLLER_PORT", CONTROLLER_PORT.to_string())
            .env("KAFKA_DIR", &self.dir)
            .env("KAFKA_HEAP", "512m")
            .output()
            .expect("scripts/kafka.sh runs")
    }

    fn start(host: &str) -> (Broker, String) {
        let broker = Broker {
            host: host.to_string(),
            dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-netns-test"),
        };
        broker.script("clean");
        let out = broker.script("start");
        assert!(
            out.status.success(),
            "scripts/kafka.sh start on {host} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the script prints the bootstrap address")
            .trim()
            .to_string();
        assert_eq!(bootstrap, format!("{host}:{BROKER_PORT}"));
        (broker, bootstrap)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.script("clean");
    }
}

/// Root and `ip`, or a clear failure (a skip only when asked for).
fn can_run() -> bool {
    if std::env::var("WATERLINE_SKIP_NETNS").as_deref() == Ok("1") {
        report("netns test skipped: WATERLINE_SKIP_NETNS=1");
        return false;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "the network-namespace test needs root (it creates namespaces and links); run it as \
         root, or set WATERLINE_SKIP_NETNS=1 to skip it"
    );
    let ip_ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ip_ok,
        "the network-namespace test needs `ip` (Debian: apt-get install iproute2), or \
         WATERLINE_SKIP_NETNS=1 to skip it"
    );
    true
}

struct Job<'a> {
    hosts: &'a Hosts,
    hosts_file: PathBuf,
    dataflow: PathBuf,
    app: String,
    bootstrap: String,
    logs: [PathBuf; 2],
}

impl Job<'_> {
    /// Process `i` of the job, inside namespace `i`.
    fn spawn(&self, i: usize, extra: &[&str]) -> Running {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts.namespaces[i]])
            .arg(env!("CARGO_BIN_EXE_waterline"))
            .args(["run", "--dataflow", self.dataflow.to_str().expect("utf-8")])
            .args(["-w", "2", "--processes", "2", "--process", &i.to_string()])
            .args(["--hosts", self.hosts_file.to_str().expect("utf-8")])
            .args(["--http-listen", "off", "--bootstrap", &self.bootstrap])
            .args(extra)
            .env("WATERLINE_APP_ID", &self.app)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.logs[i]).expect("log file"))
            .spawn()
            .expect("ip netns exec waterline starts");
        Running(child)
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_processes_in_two_network_namespaces_run_one_job() {
    if !can_run() {
        return;
    }
    let hosts = Hosts::create();
    let (_broker, bootstrap) = Broker::start(&hosts.gateway);
    use_broker(&bootstrap);
    const PARTITIONS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts_file = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts_file,
        format!(
            "{}:{PEER_PORT}\n{}:{PEER_PORT}\n",
            hosts.addresses[0], hosts.addresses[1]
        ),
    )
    .expect("write the hosts file");

    // 1. A bounded run across the two hosts.
    let input = unique("netns-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(77, PARTITIONS, 3_000));
    produce(&input, &records);
    let (out, dlq, late) = (unique("netns-w"), unique("netns-d"), unique("netns-l"));
    let job = Job {
        hosts: &hosts,
        hosts_file: hosts_file.clone(),
        dataflow: trades_dataflow(dir.path(), &input, &out, &dlq, &late),
        app: unique("netns-app"),
        bootstrap: bootstrap.clone(),
        logs: [dir.path().join("a0.log"), dir.path().join("a1.log")],
    };
    let mut children: Vec<Running> = (0..2).map(|i| job.spawn(i, &["--stop-at-end"])).collect();
    for (i, c) in children.iter_mut().enumerate() {
        let status = wait_for(c, Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "process {i} of the bounded run completes ({status:?}):\n{}",
            job.log(i)
        );
    }
    for i in 0..2 {
        let peer = format!(
            "peer={} address={}:{PEER_PORT}",
            1 - i,
            hosts.addresses[1 - i]
        );
        assert!(
            job.log(i).contains(&peer) && job.log(i).contains("connected"),
            "process {i} connected to its peer over the namespace's address ({peer}):\n{}",
            job.log(i)
        );
    }
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert_matches(
        &committed(&out, &dlq, &late),
        &expected,
        "two hosts, bounded",
    );
    let total: usize = inputs.iter().map(Vec::len).sum();
    report(&format!(
        "netns: 2 processes x 2 workers in two network namespaces ({} and {}), broker at \
         {bootstrap}: {total} records, committed output equals the recomputation ({} windows)",
        hosts.addresses[0],
        hosts.addresses[1],
        expected.windows.len()
    ));

    // 2. Host 1 vanishes under a running job; the job is restarted once it is back.
    let input = unique("netns-lost-in");
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(78, PARTITIONS, 3_000));
    produce(&input, &records);
    let (out, dlq, late) = (unique("netns-lw"), unique("netns-ld"), unique("netns-ll"));
    for t in [&out, &dlq, &late] {
        create_topic(t, 8);
    }
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    set_idle_timeout(&dataflow, "1h");
    let job = Job {
        dataflow,
        app: unique("netns-lost-app"),
        logs: [dir.path().join("b0.log"), dir.path().join("b1.log")],
        ..job
    };
    let mut children: Vec<Running> = (0..2).map(|i| job.spawn(i, &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&out, &dlq, &late).windows.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the unbounded job commits output:\n{}\n{}",
            job.log(0),
            job.log(1)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    hosts.set_link(1, false);
    let cut = Instant::now();
    let status = wait_for(&mut children[0], Duration::from_secs(60));
    let took = cut.elapsed();
    for c in children.iter_mut() {
        // Process 1 may still wait on the broker it cannot reach; the job is restarted anyway.
        let _ = c.kill();
        let _ = c.wait();
    }
    let text = job.log(0);
    assert!(
        status.is_some_and(|s| !s.success()),
        "process 0 stops with an error when host 1 vanishes ({status:?}):\n{text}"
    );
    let lost = format!("process 1 at {}:{PEER_PORT} was lost", hosts.addresses[1]);
    assert!(
        text.contains(&lost) && text.contains("nothing heard from it"),
        "{lost:?} (silence, not a closed connection) in:\n{text}"
    );
    assert!(!text.contains("panicked"), "no panic:\n{text}");
    hosts.set_link(1, true);
    let mut children: Vec<Running> = (0..2).map(|i| job.spawn(i, &["--stop-at-end"])).collect();
    for (i, c) in children.iter_mut().enumerate() {
        let status = wait_for(c, Duration::from_secs(180));
        assert!(
            status.is_some_and(|s| s.success()),
            "process {i} of the restarted job completes ({status:?}):\n{}",
            job.log(i)
        );
    }
    let expected = recompute_deduped(&inputs, TRADES_OOO_MS, &[TRADES_WINDOW], TRADES_DEDUPE);
    assert_matches(
        &committed(&out, &dlq, &late),
        &expected,
        "two hosts, one lost and the job restarted",
    );
    report(&format!(
        "netns: host 1's link cut under a running job; process 0 stopped after {took:?} naming \
         process 1; the restarted job's committed output equals the recomputation exactly"
    ));
}
