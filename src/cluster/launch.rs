//! `waterline cluster`: every process of a job on this host, for development and tests.
//!
//! The launcher writes a hosts file (`127.0.0.1:<base-port + i>` for process `i`), starts
//! `waterline run` once per process with the same arguments plus `--process i --hosts
//! <file>` (and the metrics endpoint's port moved by `i`), prefixes each line the processes
//! print with `[process i]`, and forwards SIGINT/SIGTERM to all of them. When one exits
//! with an error, the others stop by themselves (they lose it); the launcher waits for
//! them and exits with the first failure's code, so a script or a supervisor sees the job
//! fail as one.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the launcher could not run the job.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The arguments cannot be passed on.
    #[error("{0}")]
    Arguments(String),
    /// The hosts file or a process could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The job to launch.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Processes to start.
    pub processes: usize,
    /// Process `i` listens on `127.0.0.1:<base_port + i>`.
    pub base_port: u16,
    /// The metrics endpoint of process 0 (from the configuration; `None`: off). Process
    /// `i` listens on its port + `i` (port 0 stays 0).
    pub http_listen: Option<SocketAddr>,
    /// The arguments of `waterline run`, without `--process`, `--hosts` and
    /// `--http-listen`.
    pub run_args: Vec<String>,
}

/// The arguments a `waterline cluster …` command line passes to each `waterline run`:
/// `cluster` becomes `run`, and the launcher's own `--base-port` and the per-process
/// `--http-listen` are taken out.
pub fn run_args(argv: &[String]) -> Result<Vec<String>, LaunchError> {
    let at = argv
        .iter()
        .position(|a| a == "cluster")
        .ok_or_else(|| LaunchError::Arguments("no `cluster` subcommand".into()))?;
    let mut out = vec!["run".to_string()];
    let mut rest = argv[at + 1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--base-port" | "--http-listen" => {
                rest.next();
            }
            s if s.starts_with("--base-port=") || s.starts_with("--http-listen=") => {}
            _ => out.push(a.clone()),
        }
    }
    Ok(out)
}

/// The metrics address of process `i`.
fn http_listen_of(base: Option<SocketAddr>, i: usize) -> Result<String, LaunchError> {
    let Some(mut address) = base else {
        return Ok("off".into());
    };
    if address.port() != 0 {
        let port = usize::from(address.port()) + i;
        let port = u16::try_from(port).map_err(|_| {
            LaunchError::Arguments(format!(
                "http.listen {address}: process {i} would need port {port}"
            ))
        })?;
        address.set_port(port);
    }
    Ok(address.to_string())
}

/// Runs every process of `launch` until all have exited; returns the exit code for the
/// job: 0 when every process succeeded, else the first failure's code. `shutdown` is
/// forwarded to every process as SIGTERM.
pub fn run(launch: &Launch, shutdown: &Arc<AtomicBool>) -> Result<u8, LaunchError> {
    let last = usize::from(launch.base_port) + launch.processes.saturating_sub(1);
    if u16::try_from(last).is_err() {
        return Err(LaunchError::Arguments(format!(
            "--base-port {}: {} processes would need port {last}",
            launch.base_port, launch.processes
        )));
    }
    let dir = std::env::temp_dir().join(format!("waterline-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| LaunchError::Io {
        what: format!("cannot create {}", dir.display()),
        source,
    })?;
    let hosts: PathBuf = dir.join("hosts.txt");
    let text: String = (0..launch.processes)
        .map(|i| format!("127.0.0.1:{}\n", usize::from(launch.base_port) + i))
        .collect();
    std::fs::write(&hosts, text).map_err(|source| LaunchError::Io {
        what: format!("cannot write {}", hosts.display()),
        source,
    })?;
    let result = run_processes(launch, &hosts, shutdown);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_processes(
    launch: &Launch,
    hosts: &std::path::Path,
    shutdown: &Arc<AtomicBool>,
) -> Result<u8, LaunchError> {
    let exe = std::env::current_exe().map_err(|source| LaunchError::Io {
        what: "cannot find the waterline binary".into(),
        source,
    })?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut printers = Vec::new();
    for i in 0..launch.processes {
        let mut command = Command::new(&exe);
        command
            .args(&launch.run_args)
            .args(["--process", &i.to_string()])
            .arg("--hosts")
            .arg(hosts)
            .args(["--http-listen", &http_listen_of(launch.http_listen, i)?])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !std::io::stderr().is_terminal() {
            // The lines pass through a pipe: no colour codes in a log file.
            command.env("NO_COLOR", "1");
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(source) => {
                stop_all(&mut children, rustix::process::Signal::KILL);
                return Err(LaunchError::Io {
                    what: format!("cannot start process {i}"),
                    source,
                });
            }
        };
        if let Some(out) = child.stdout.take() {
            printers.push(prefix_lines(i, out, false));
        }
        if let Some(err) = child.stderr.take() {
            printers.push(prefix_lines(i, err, true));
        }
        children.push((i, child));
    }
    eprintln!(
        "waterline cluster: {} processes on 127.0.0.1:{}..{} (hosts file {})",
        launch.processes,
        launch.base_port,
        usize::from(launch.base_port) + launch.processes - 1,
        hosts.display()
    );
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; launch.processes];
    let mut first_failure: Option<(usize, u8)> = None;
    let mut forwarded = false;
    let mut give_up: Option<Instant> = None;
    while statuses.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(100));
        if shutdown.load(Ordering::SeqCst) && !forwarded {
            forwarded = true;
            stop_all(&mut children, rustix::process::Signal::TERM);
        }
        for (i, child) in &mut children {
            if statuses[*i].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                statuses[*i] = Some(status);
                if !status.success() && first_failure.is_none() {
                    let code = status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1));
                    first_failure = Some((*i, code.max(1)));
                    // The others notice the loss within the peer timeout; then stragglers
                    // are killed.
                    give_up = Some(Instant::now() + super::PEER_TIMEOUT * 3);
                }
            }
        }
        if give_up.is_some_and(|t| Instant::now() > t) {
            eprintln!("waterline cluster: processes still running after a failure; killing them");
            stop_all(&mut children, rustix::process::Signal::KILL);
            give_up = None;
        }
    }
    for p in printers {
        let _ = p.join();
    }
    for (i, status) in statuses.iter().enumerate() {
        if let Some(s) = status
            && !s.success()
        {
            eprintln!("waterline cluster: process {i} exited with {s}");
        }
    }
    Ok(match first_failure {
        None => 0,
        Some((i, code)) => {
            eprintln!("waterline cluster: the job failed (process {i} first)");
            code
        }
    })
}

fn stop_all(children: &mut [(usize, Child)], signal: rustix::process::Signal) {
    for (_, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), signal);
        }
    }
}

fn prefix_lines(
    i: usize,
    pipe: impl std::io::Read + Send + 'static,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let line = format!("[process {i}] {line}\n");
            // A closed terminal is no reason to stop the job.
            let _ = if to_stderr {
                std::io::stderr().write_all(line.as_bytes())
            } else {
                std::io::stdout().write_all(line.as_bytes())
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cluster_arguments_become_run_arguments() {
        let argv = strings(&[
            "waterline",
            "cluster",
            "--processes",
            "2",
            "-w",
            "2",
            "--base-port",
            "7000",
            "--dataflow",
            "d.toml",
            "--http-listen=127.0.0.1:0",
            "--stop-at-end",
        ]);
        assert_eq!(
            run_args(&argv).expect("valid"),
            strings(&[
                "run",
                "--processes",
                "2",
                "-w",
                "2",
                "--dataflow",
                "d.toml",
                "--stop-at-end"
            ])
        );
    }

    #[test]
    fn each_process_gets_its_own_metrics_port() {
        let at = |s: &str| Some(s.parse::<SocketAddr>().expect("an address"));
        assert_eq!(
            http_listen_of(at("127.0.0.1:9464"), 0).expect("ok"),
            "127.0.0.1:9464"
        );
        assert_eq!(
            http_listen_of(at("127.0.0.1:9464"), 2).expect("ok"),
            "127.0.0.1:9466"
        );
        assert_eq!(
            http_listen_of(at("127.0.0.1:0"), 3).expect("ok"),
            "127.0.0.1:0"
        );
        assert_eq!(http_listen_of(None, 1).expect("ok"), "off");
        assert!(http_listen_of(at("127.0.0.1:65535"), 1).is_err());
    }
}
