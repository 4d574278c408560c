//! One job across several processes and hosts: timely's cluster mode, with a start-up
//! that cannot hang and a run that stops when any process is lost.
//!
//! ```text
//!  process 0 (hosts line 0)           process 1 (hosts line 1)          …
//!  ┌──────────────────────┐  control  ┌──────────────────────┐
//!  │ mesh: hello, barrier,├───────────┤ mesh: hello, barrier,│   hello: app id, dataflow
//!  │ plan, stop, abort,   │           │ plan, stop, abort,   │   fingerprint, processes,
//!  │ heartbeats           │   data    │ heartbeats           │   workers, hosts, bounded
//!  │ workers 0..N ────────┼───────────┼──── workers N..2N    │
//!  └──────────────────────┘ (timely)  └──────────────────────┘
//! ```
//!
//! A job of `M` processes with `N` workers each has `N × M` workers; process `I` runs
//! global workers `I·N .. (I+1)·N`, and partition `p` is read by global worker
//! `p % (N × M)` (timely's worker index and peer count are global).
//!
//! Start-up ([`Mesh::join`]): every process binds its line of the hosts file, connects to
//! the processes listed before it and accepts the ones listed after it (the order timely
//! uses), two connections per pair: a control connection of waterline's own and the data
//! connection timely runs on. Both sides send a [`Hello`] and compare: a process started
//! with another dataflow, app id, worker count or hosts file is refused with what differs.
//! A peer not reached within `--cluster-timeout` is named (index and address) in the error,
//! instead of timely's retry-forever. The data connections are then handed to timely
//! (`initialize_networking_from_sockets`), so no port is released and bound again.
//!
//! Exactly-once across processes: each process fences only its own workers'
//! transactional ids, then waits at a barrier until every process has fenced; only then
//! does process 0 read the progress topic, decide the restart positions and bounds, and
//! send that plan to the others, so every process starts from the same decision.
//!
//! What timely 0.32 does by itself (read in `timely_communication`'s `networking.rs` and
//! `zero_copy/tcp.rs`, and seen by experiment): `Config::Cluster` retries a connection
//! forever, once a second, printing "awaiting connections" to stdout; when a peer is
//! killed, its receive thread panics ("timely communication error: reading data: socket
//! closed"), which poisons the queues it feeds, so the workers panic too ("MergeQueue
//! poisoned") and the process aborts (SIGABRT) while joining them; when a host vanishes
//! without closing its connections, nothing notices and the workers wait forever. Hence
//! the handshake, the heartbeats and the wrapped data connections here.
//!
//! Failure: a process that fails sends its reason to the others; a process that dies
//! (SIGKILL, a crash) closes its connections, and a host that vanishes stops sending
//! heartbeats for [`PEER_TIMEOUT`]. Either way the others stop their workers and exit with
//! an error naming the lost process; the data connections are wrapped
//! ([`stream::WatchedStream`]) so that timely's network threads report the loss instead of
//! panicking. An orchestrator then restarts the whole job, which recovers exactly from the
//! committed progress with the same total worker count. A stop request (SIGINT/SIGTERM) on
//! any process stops them all.

pub mod launch;
pub mod mesh;
pub mod stream;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use mesh::Mesh;

/// A process that has sent nothing (not even a heartbeat) for this long is lost: its host
/// is down or the network between is cut.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where this process sits in a job of several processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Processes in the job.
    pub processes: usize,
    /// This process's index, below `processes`.
    pub process: usize,
    /// Every process's address (`host:port`), in process order.
    pub hosts: Vec<String>,
    /// The address to listen on, when not this process's line of `hosts` (e.g.
    /// `0.0.0.0:7000` behind NAT or in a container).
    pub listen: Option<String>,
    /// How long start-up waits for every other process.
    pub connect_timeout: Duration,
}

/// Why a job of several processes could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `--process` is not a process of the job.
    #[error(
        "--process {process} is not below --processes {processes} (process indices are 0..{processes})"
    )]
    ProcessOutOfRange {
        /// The given index.
        process: usize,
        /// The given process count.
        processes: usize,
    },
    /// Several processes need to know their index.
    #[error("--process is required with --processes {0} (this process's index, 0..{0})")]
    MissingProcess(usize),
    /// Several processes need to know each other's addresses.
    #[error(
        "--hosts is required with --processes {0} (a file with every process's host:port, one per line)"
    )]
    MissingHosts(usize),
    /// The hosts file is unreadable or wrong.
    #[error("--hosts {path}: {message}")]
    Hosts {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// This process cannot listen on its address.
    #[error("process {process} cannot listen on {address} (its line of --hosts{listen}): {source}")]
    Bind {
        /// This process.
        process: usize,
        /// The address.
        address: String,
        /// ", or --listen" when it came from there.
        listen: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Some processes were not reached in time.
    #[error(
        "process {process}: not every process of the job was reached within {timeout:?} \
         (--cluster-timeout): {missing}; start every process of the job (same --hosts, \
         --processes and --workers), check their addresses and firewalls"
    )]
    Unreachable {
        /// This process.
        process: usize,
        /// How long it waited.
        timeout: Duration,
        /// Each missing peer: index, address and what happened.
        missing: String,
    },
    /// A peer runs a different job or layout.
    #[error("process {process} at {address} does not belong to this job: {what}")]
    Mismatch {
        /// The peer.
        process: usize,
        /// Its address.
        address: String,
        /// What differs.
        what: String,
    },
    /// A peer sent something that is not waterline's protocol.
    #[error("process {process} at {address}: {what}")]
    Protocol {
        /// The peer.
        process: usize,
        /// Its address.
        address: String,
        /// What went wrong.
        what: String,
    },
    /// A peer died or became unreachable while the job ran.
    #[error(
        "process {process} at {address} was lost ({why}); this process stops too. Restart \
         the whole job: it resumes exactly from the committed progress"
    )]
    PeerLost {
        /// The peer.
        process: usize,
        /// Its address.
        address: String,
        /// What was seen.
        why: String,
    },
    /// A peer failed and told the others why.
    #[error("process {process} at {address} failed: {reason}")]
    PeerFailed {
        /// The peer.
        process: usize,
        /// Its address.
        address: String,
        /// Its error.
        reason: String,
        /// Whether running again can fix it (the peer retries too).
        retriable: bool,
    },
    /// A stop was requested (here or on a peer) before the workers started.
    #[error("stopped before the workers started")]
    Stopped,
}

impl ClusterError {
    /// Whether running the job again in this process can succeed: only when a peer failed
    /// in a way it retries itself (then every process runs again and meets again).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClusterError::PeerFailed {
                retriable: true,
                ..
            }
        )
    }
}

impl Layout {
    /// The layout the flags describe, or `None` for a job of one process. Every mistake is
    /// reported naming the flag: an index not below `processes`, a missing `--process` or
    /// `--hosts`, a hosts file that does not list exactly `processes` distinct `host:port`
    /// addresses.
    pub fn from_flags(
        processes: usize,
        process: Option<usize>,
        hosts: Option<&Path>,
        listen: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Option<Layout>, ClusterError> {
        if let Some(process) = process
            && process >= processes
        {
            return Err(ClusterError::ProcessOutOfRange { process, processes });
        }
        if processes <= 1 {
            return Ok(None);
        }
        let process = process.ok_or(ClusterError::MissingProcess(processes))?;
        let path = hosts.ok_or(ClusterError::MissingHosts(processes))?;
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Hosts {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let hosts = parse_hosts(&text, processes).map_err(|message| ClusterError::Hosts {
            path: path.to_path_buf(),
            message,
        })?;
        if let Some(l) = listen {
            check_address(l).map_err(|m| ClusterError::Hosts {
                path: path.to_path_buf(),
                message: format!("--listen {l}: {m}"),
            })?;
        }
        Ok(Some(Layout {
            processes,
            process,
            hosts,
            listen: listen.map(str::to_string),
            connect_timeout,
        }))
    }

    /// The global index of this process's first worker, with `workers` per process.
    pub fn first_worker(&self, workers: usize) -> usize {
        self.process * workers
    }
}

/// Reads a hosts file: one `host:port` per line in process order; blank lines and lines
/// starting with `#` are skipped, and text after whitespace on a line is ignored (timely's
/// format, plus comments). There must be exactly `processes` addresses, all different.
pub fn parse_hosts(text: &str, processes: usize) -> Result<Vec<String>, String> {
    let mut hosts: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let address = line.split_whitespace().next().unwrap_or(line).to_string();
        check_address(&address).map_err(|m| format!("line {}: `{address}`: {m}", n + 1))?;
        if let Some((first, _)) = hosts.iter().find(|(_, a)| a.eq_ignore_ascii_case(&address)) {
            return Err(format!(
                "line {}: `{address}` is listed twice (also on line {first}); every process \
                 needs an address of its own",
                n + 1
            ));
        }
        hosts.push((n + 1, address));
    }
    if hosts.len() != processes {
        return Err(format!(
            "lists {} address{}, and --processes is {processes}: list one host:port per \
             process, in process order",
            hosts.len(),
            if hosts.len() == 1 { "" } else { "es" }
        ));
    }
    Ok(hosts.into_iter().map(|(_, a)| a).collect())
}

/// `host:port` with a non-empty host and a port in 1..=65535 (`[v6]:port` too).
fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address.rsplit_once(':').ok_or("not host:port (no port)")?;
    if host.is_empty() || host == "[]" {
        return Err("not host:port (no host)".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{port}` is not a port (1..65535)")),
    }
}

/// What two processes of a job must agree on, exchanged when they connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The control protocol's version.
    pub protocol: u32,
    /// The sender's process index.
    pub process: usize,
    /// Processes in the job.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
    /// The application id (consumer group, progress topic, transactional ids).
    pub app_id: String,
    /// The dataflow's name.
    pub dataflow: String,
    /// The dataflow's fingerprint ([`crate::progress::fingerprint`]).
    pub fingerprint: String,
    /// Every process's address, as the sender's hosts file lists them.
    pub hosts: Vec<String>,
    /// Whether the run is bounded (`--stop-at-end` or `--until`).
    pub bounded: bool,
}

/// The control protocol's version: processes of different versions refuse each other.
pub const PROTOCOL: u32 = 1;

impl Hello {
    /// What differs between this process's hello and a peer's (`None`: nothing).
    pub fn difference(&self, peer: &Hello) -> Option<String> {
        let differs = |what: &str, theirs: String, ours: String| {
            Some(format!(
                "its {what} is {theirs} and this process's is {ours}; every process of a \
                 job needs the same"
            ))
        };
        if peer.protocol != self.protocol {
            return differs(
                "waterline protocol",
                peer.protocol.to_string(),
                self.protocol.to_string(),
            );
        }
        if peer.processes != self.processes {
            return differs(
                "--processes",
                peer.processes.to_string(),
                self.processes.to_string(),
            );
        }
        if peer.workers != self.workers {
            return differs(
                "--workers",
                peer.workers.to_string(),
                self.workers.to_string(),
            );
        }
        if peer.app_id != self.app_id {
            return differs(
                "app id",
                format!("`{}`", peer.app_id),
                format!("`{}`", self.app_id),
            );
        }
        if peer.dataflow != self.dataflow || peer.fingerprint != self.fingerprint {
            return differs(
                "dataflow",
                format!("`{}` (fingerprint {})", peer.dataflow, peer.fingerprint),
                format!("`{}` (fingerprint {})", self.dataflow, self.fingerprint),
            );
        }
        if peer.hosts != self.hosts {
            return differs("--hosts list", peer.hosts.join(","), self.hosts.join(","));
        }
        if peer.bounded != self.bounded {
            let says = |b: bool| if b { "bounded" } else { "unbounded" }.to_string();
            return differs(
                "run (--stop-at-end/--until)",
                says(peer.bounded),
                says(self.bounded),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_are_read_in_order_with_comments() {
        let text = "# the job\n10.0.0.1:7000\n\n  host-b:7000   # second\n[::1]:7002\n";
        assert_eq!(
            parse_hosts(text, 3),
            Ok(vec![
                "10.0.0.1:7000".to_string(),
                "host-b:7000".to_string(),
                "[::1]:7002".to_string()
            ])
        );
    }

    #[test]
    fn bad_hosts_files_say_which_line() {
        let e = parse_hosts("a:1\nb:2\nA:1\n", 3).expect_err("duplicate");
        assert!(
            e.contains("line 3") && e.contains("twice") && e.contains("line 1"),
            "{e}"
        );
        let e = parse_hosts("a:1\nb\n", 2).expect_err("no port");
        assert!(e.contains("line 2") && e.contains("no port"), "{e}");
        let e = parse_hosts("a:1\nb:99999\n", 2).expect_err("bad port");
        assert!(e.contains("line 2") && e.contains("99999"), "{e}");
        let e = parse_hosts("a:1\nb:2\n", 3).expect_err("too few");
        assert!(
            e.contains("2 addresses") && e.contains("--processes is 3"),
            "{e}"
        );
        let e = parse_hosts(":1\n", 1).expect_err("no host");
        assert!(e.contains("no host"), "{e}");
    }

    #[test]
    fn flags_are_checked_naming_the_flag() {
        let t = Duration::from_secs(1);
        let e = Layout::from_flags(2, Some(2), None, None, t).expect_err("index");
        assert!(
            e.to_string()
                .contains("--process 2 is not below --processes 2"),
            "{e}"
        );
        let e = Layout::from_flags(2, None, None, None, t).expect_err("no index");
        assert!(e.to_string().contains("--process is required"), "{e}");
        let e = Layout::from_flags(2, Some(1), None, None, t).expect_err("no hosts");
        assert!(e.to_string().contains("--hosts is required"), "{e}");
        let missing = Path::new("/nonexistent/hosts.txt");
        let e = Layout::from_flags(2, Some(1), Some(missing), None, t).expect_err("unreadable");
        assert!(
            e.to_string().contains("--hosts /nonexistent/hosts.txt"),
            "{e}"
        );
        assert_eq!(
            Layout::from_flags(1, None, None, None, t).expect("one"),
            None
        );
        assert_eq!(
            Layout::from_flags(1, Some(0), None, None, t).expect("one"),
            None
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1:7100\n127.0.0.1:7101\n").expect("write");
        let layout = Layout::from_flags(2, Some(1), Some(&file), None, t)
            .expect("valid")
            .expect("two processes");
        assert_eq!(layout.first_worker(3), 3);
        let e = Layout::from_flags(2, Some(1), Some(&file), Some("0.0.0.0"), t)
            .expect_err("bad listen");
        assert!(e.to_string().contains("--listen 0.0.0.0"), "{e}");
    }

    #[test]
    fn hellos_name_what_differs() {
        let ours = Hello {
            protocol: PROTOCOL,
            process: 0,
            processes: 2,
            workers: 2,
            app_id: "a".into(),
            dataflow: "d".into(),
            fingerprint: "f".into(),
            hosts: vec!["x:1".into(), "y:1".into()],
            bounded: true,
        };
        let peer = Hello {
            process: 1,
            ..ours.clone()
        };
        assert_eq!(ours.difference(&peer), None);
        let e = ours
            .difference(&Hello {
                workers: 3,
                ..peer.clone()
            })
            .expect("workers differ");
        assert!(e.contains("--workers is 3") && e.contains("is 2"), "{e}");
        let e = ours
            .difference(&Hello {
                fingerprint: "g".into(),
                ..peer.clone()
            })
            .expect("dataflow differs");
        assert!(e.contains("fingerprint g"), "{e}");
        let e = ours
            .difference(&Hello {
                bounded: false,
                ..peer
            })
            .expect("boundedness differs");
        assert!(e.contains("unbounded"), "{e}");
    }
}
