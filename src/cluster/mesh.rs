//! The connections between the processes of a job, and what travels on them besides
//! timely's data.
//!
//! Each pair of processes has a control connection and a data connection; the process
//! listed later in the hosts file connects to the earlier one (timely's order), and each
//! connection starts with a preamble naming its kind and the connecting process. On the
//! control connection, messages are a big-endian `u32` length and a JSON [`Message`]:
//!
//! - `Hello` once, both ways, to check the peer runs the same job ([`super::Hello`]);
//! - `Barrier(name)`: the sender has reached `name` (every process waits for every other);
//! - `Plan(json)`: process 0's decision on where every partition starts and stops;
//! - `Stop`: a stop was requested on the sender; every process stops;
//! - `Abort { reason, retriable }`: the sender failed; every process stops;
//! - `Finished`: the sender's run ended well; its connections close next;
//! - `Heartbeat`, every second: silence for [`PEER_TIMEOUT`] means the peer is lost.
//!
//! One thread per peer reads its control connection; one more sends heartbeats and
//! forwards a local stop request. A loss (the connection ends without `Finished`, or goes
//! silent) or an `Abort` is recorded once, raises the run's abort flag, and is what the run
//! reports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::communication::allocator::zero_copy::initialize::{
    CommsGuard, initialize_networking_from_sockets,
};
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, WorkerGuards};
use timely::worker::Worker;

use super::stream::{LossReport, WatchedStream};
use super::{ClusterError, Hello, Layout, PEER_TIMEOUT};

/// What the control connection carries.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Hello(Hello),
    Barrier(String),
    Plan(String),
    Abort { reason: String, retriable: bool },
    Stop,
    Finished,
    Heartbeat,
}

/// Opens every connection: "waterline", a NUL, the kind, the connecting process (`u32`).
const PREAMBLE: &[u8; 10] = b"waterline\0";
const CONTROL: u8 = 0;
const DATA: u8 = 1;
/// The largest control message accepted (a plan holds every partition's position).
const MAX_MESSAGE: u32 = 256 << 20;
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often waits and the heartbeat thread look at the flags.
const TICK: Duration = Duration::from_millis(100);
/// How long the end of a run waits for timely's network threads to finish their goodbyes.
const COMMS_CLOSE: Duration = Duration::from_secs(30);

/// A peer's failure, as first recorded.
#[derive(Clone, Debug)]
enum Failure {
    Lost {
        process: usize,
        why: String,
    },
    Failed {
        process: usize,
        reason: String,
        retriable: bool,
    },
}

#[derive(Default)]
struct State {
    failure: Option<Failure>,
    barriers: BTreeMap<String, BTreeSet<usize>>,
    plan: Option<String>,
    finished: BTreeSet<usize>,
}

/// What the mesh's threads share.
struct Shared {
    me: usize,
    hosts: Vec<String>,
    state: Mutex<State>,
    changed: Condvar,
    /// Set on a peer's failure: the workers stop.
    abort: Arc<AtomicBool>,
    /// Set when a stop was requested here or on a peer: the workers stop cleanly.
    stop: Arc<AtomicBool>,
    /// The run is over: connections ending now are expected.
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no thread panics holding the mesh state")
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    fn fail(&self, failure: Failure) {
        let mut state = self.lock();
        let finished = match &failure {
            Failure::Lost { process, .. } => state.finished.contains(process),
            Failure::Failed { .. } => false,
        };
        if state.failure.is_none() && !finished && !self.closing.load(Ordering::SeqCst) {
            match &failure {
                Failure::Lost { process, why } => tracing::error!(
                    peer = process,
                    address = %self.hosts[*process],
                    why = %why,
                    "a process of the job was lost; stopping"
                ),
                Failure::Failed {
                    process, reason, ..
                } => tracing::error!(
                    peer = process,
                    address = %self.hosts[*process],
                    reason = %reason,
                    "a process of the job failed; stopping"
                ),
            }
            state.failure = Some(failure);
            self.abort.store(true, Ordering::SeqCst);
        }
        drop(state);
        self.changed.notify_all();
    }

    fn error(&self, failure: &Failure) -> ClusterError {
        match failure.clone() {
            Failure::Lost { process, why } => ClusterError::PeerLost {
                process,
                address: self.hosts[process].clone(),
                why,
            },
            Failure::Failed {
                process,
                reason,
                retriable,
            } => ClusterError::PeerFailed {
                process,
                address: self.hosts[process].clone(),
                reason,
                retriable,
            },
        }
    }
}

/// The connections of one process to every other process of its job, for one run.
pub struct Mesh {
    workers: usize,
    processes: usize,
    shared: Arc<Shared>,
    /// Control connections, by process (`None` for this one).
    control: Vec<Option<Arc<Mutex<TcpStream>>>>,
    /// Data connections, by process, until timely takes them.
    data: Mutex<Option<Vec<Option<TcpStream>>>>,
    comms: Mutex<Option<CommsGuard>>,
}

/// The connections to one peer while they are being opened.
#[derive(Default)]
struct Pending {
    control: Option<TcpStream>,
    data: Option<TcpStream>,
    last_error: Option<String>,
}

impl Mesh {
    /// Connects this process to every other process of `layout` and checks that they run
    /// the same job (`hello`), within `layout.connect_timeout`; the error names every
    /// process not reached. `shutdown` (SIGINT/SIGTERM) ends the wait, and during the run
    /// it is forwarded to the other processes. `workers` is the number per process.
    pub fn join(
        layout: &Layout,
        hello: Hello,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Mesh, ClusterError> {
        let me = layout.process;
        let n = layout.processes;
        let started = Instant::now();
        let deadline = started + layout.connect_timeout;
        let address = layout.listen.as_deref().unwrap_or(&layout.hosts[me]);
        let bind = |source| ClusterError::Bind {
            process: me,
            address: address.to_string(),
            listen: if layout.listen.is_some() {
                ", or --listen"
            } else {
                ""
            },
            source,
        };
        let listener = TcpListener::bind(address).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        tracing::info!(
            process = me,
            processes = n,
            listen = %address,
            "connecting to the other processes of the job"
        );
        let mut peers: BTreeMap<usize, Pending> = (0..n)
            .filter(|j| *j != me)
            .map(|j| (j, Pending::default()))
            .collect();
        let stopped = || shutdown.load(Ordering::SeqCst);
        let mut next_attempt = Instant::now();
        loop {
            accept_ready(&listener, me, &mut peers);
            if Instant::now() >= next_attempt {
                // The processes listed before this one listen for it.
                for (j, pending) in peers.range_mut(..me) {
                    if pending.data.is_none() {
                        connect(&layout.hosts[*j], me, pending);
                    }
                }
                next_attempt = Instant::now() + Duration::from_millis(250);
            }
            if peers
                .values()
                .all(|p| p.control.is_some() && p.data.is_some())
            {
                break;
            }
            if stopped() {
                return Err(ClusterError::Stopped);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Unreachable {
                    process: me,
                    timeout: layout.connect_timeout,
                    missing: missing(&peers, &layout.hosts, me, address),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(listener);

        // Both sides say hello first, then read the other's: no side waits on the other.
        let mut control = Vec::new();
        let mut data = Vec::new();
        for j in 0..n {
            let Some(p) = peers.remove(&j) else {
                control.push(None);
                data.push(None);
                continue;
            };
            let (c, d) = (
                p.control.expect("every peer is connected here"),
                p.data.expect("every peer is connected here"),
            );
            control.push(Some(c));
            data.push(Some(d));
        }
        let protocol = |j: usize, what: String| ClusterError::Protocol {
            process: j,
            address: layout.hosts[j].clone(),
            what,
        };
        for (j, c) in control.iter_mut().enumerate() {
            if let Some(c) = c {
                write_message(c, &Message::Hello(hello.clone())).map_err(|e| {
                    protocol(j, format!("cannot send it this process's hello: {e}"))
                })?;
            }
        }
        for (j, c) in control.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(5));
            c.set_read_timeout(Some(wait))
                .map_err(|e| protocol(j, e.to_string()))?;
            let theirs = match read_message(c) {
                Ok(Message::Hello(h)) => h,
                Ok(other) => return Err(protocol(j, format!("expected a hello, got {other:?}"))),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(protocol(
                        j,
                        "it closed the connection before saying hello (it gave up waiting \
                         for another process, or is not waterline)"
                            .into(),
                    ));
                }
                Err(e) => return Err(protocol(j, format!("no hello from it: {e}"))),
            };
            if theirs.process != j {
                return Err(ClusterError::Mismatch {
                    process: j,
                    address: layout.hosts[j].clone(),
                    what: format!(
                        "it says it is process {} (check --process on each host)",
                        theirs.process
                    ),
                });
            }
            if let Some(what) = hello.difference(&theirs) {
                return Err(ClusterError::Mismatch {
                    process: j,
                    address: layout.hosts[j].clone(),
                    what,
                });
            }
            tracing::info!(process = me, peer = j, address = %layout.hosts[j], "connected");
        }
        tracing::info!(
            process = me,
            processes = n,
            workers = n * hello.workers,
            elapsed = ?started.elapsed(),
            "every process of the job is connected"
        );

        let shared = Arc::new(Shared {
            me,
            hosts: layout.hosts.clone(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            abort: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(stopped())),
            closing: AtomicBool::new(false),
        });
        let mut writers = Vec::new();
        for (j, c) in control.into_iter().enumerate() {
            let Some(c) = c else {
                writers.push(None);
                continue;
            };
            let setup = |e: io::Error| protocol(j, format!("cannot set up the connection: {e}"));
            c.set_read_timeout(Some(PEER_TIMEOUT)).map_err(setup)?;
            c.set_write_timeout(Some(PEER_TIMEOUT)).map_err(setup)?;
            let reader = c.try_clone().map_err(setup)?;
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("waterline:peer-{j}"))
                .spawn(move || read_loop(&shared, j, reader))
                .map_err(setup)?;
            writers.push(Some(Arc::new(Mutex::new(c))));
        }
        {
            let shared = Arc::clone(&shared);
            let writers = writers.clone();
            std::thread::Builder::new()
                .name("waterline:heartbeat".into())
                .spawn(move || heartbeat_loop(&shared, &writers, &shutdown))
                .map_err(|e| protocol(0, format!("cannot start the heartbeat thread: {e}")))?;
        }
        Ok(Mesh {
            workers: hello.workers,
            processes: n,
            shared,
            control: writers,
            data: Mutex::new(Some(data)),
            comms: Mutex::new(None),
        })
    }

    /// This process's index.
    pub fn process(&self) -> usize {
        self.shared.me
    }

    /// Processes in the job.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Whether this process decides for the job (process 0).
    pub fn is_leader(&self) -> bool {
        self.shared.me == 0
    }

    /// Set when a peer failed or was lost: the workers must stop.
    pub fn abort_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.abort)
    }

    /// Set when a stop was requested on this process or any other.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.stop)
    }

    /// A peer's failure or loss, if one happened.
    pub fn failure(&self) -> Option<ClusterError> {
        let state = self.shared.lock();
        state.failure.as_ref().map(|f| self.shared.error(f))
    }

    fn broadcast(&self, message: &Message) {
        for (j, c) in self.control.iter().enumerate() {
            if let Some(c) = c {
                let mut c = c.lock().expect("no thread panics holding a connection");
                if let Err(e) = write_message(&mut c, message) {
                    // Its reader notices the loss and reports it.
                    tracing::debug!(peer = j, error = %e, "cannot send to a peer");
                }
            }
        }
    }

    fn wait<T>(&self, mut ready: impl FnMut(&State) -> Option<T>) -> Result<T, ClusterError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(f) = &state.failure {
                return Err(self.shared.error(f));
            }
            if let Some(t) = ready(&state) {
                return Ok(t);
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                return Err(ClusterError::Stopped);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, TICK)
                .expect("no thread panics holding the mesh state")
                .0;
        }
    }

    /// Waits until every process has reached `name` (a failure or a stop ends the wait).
    pub fn barrier(&self, name: &str) -> Result<(), ClusterError> {
        self.broadcast(&Message::Barrier(name.to_string()));
        let others = self.processes - 1;
        let result =
            self.wait(|s| (s.barriers.get(name).map_or(0, BTreeSet::len) >= others).then_some(()));
        if result.is_ok() {
            tracing::debug!(
                process = self.shared.me,
                barrier = name,
                "every process is here"
            );
        }
        result
    }

    /// Sends process 0's plan to every other process.
    pub fn share_plan<T: Serialize>(&self, plan: &T) -> Result<(), ClusterError> {
        let text = serde_json::to_string(plan).map_err(|e| ClusterError::Protocol {
            process: self.shared.me,
            address: self.shared.hosts[self.shared.me].clone(),
            what: format!("cannot encode the plan: {e}"),
        })?;
        self.broadcast(&Message::Plan(text));
        Ok(())
    }

    /// Waits for process 0's plan.
    pub fn receive_plan<T: DeserializeOwned>(&self) -> Result<T, ClusterError> {
        let text = self.wait(|s| s.plan.clone())?;
        serde_json::from_str(&text).map_err(|e| ClusterError::Protocol {
            process: 0,
            address: self.shared.hosts[0].clone(),
            what: format!("its plan cannot be read: {e}"),
        })
    }

    /// Runs `func` on this process's workers, connected to every other process's workers
    /// over the data connections (timely's cluster mode, global worker indices).
    pub fn execute<T, F>(&self, func: F) -> Result<WorkerGuards<T>, String>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> T + Send + Sync + 'static,
    {
        let streams = self
            .data
            .lock()
            .expect("no thread panics holding the data connections")
            .take()
            .ok_or("the data connections were used by an earlier run")?;
        let report: LossReport = {
            let shared = Arc::clone(&self.shared);
            Arc::new(move |peer, why| shared.fail(Failure::Lost { process: peer, why }))
        };
        let sockets = streams
            .into_iter()
            .enumerate()
            .map(|(j, s)| s.map(|s| WatchedStream::new(s, j, Arc::clone(&report))))
            .collect();
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(
            self.workers,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (builders, comms) =
            initialize_networking_from_sockets(local, sockets, self.shared.me, self.workers, hooks)
                .map_err(|e| format!("cannot start timely's networking: {e}"))?;
        *self
            .comms
            .lock()
            .expect("no thread panics holding the comms") = Some(comms);
        timely::execute::execute_from(
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(()),
            timely::WorkerConfig::default(),
            func,
        )
    }

    /// Ends the run: tells the other processes this one finished (`error` = `None`) or
    /// failed (and whether it will run again), lets timely's network threads say goodbye,
    /// and closes the connections.
    pub fn finish(&self, error: Option<(String, bool)>) {
        match error {
            None => self.broadcast(&Message::Finished),
            Some((reason, retriable)) => self.broadcast(&Message::Abort { reason, retriable }),
        }
        let comms = self
            .comms
            .lock()
            .expect("no thread panics holding the comms")
            .take();
        let lost = matches!(self.shared.lock().failure, Some(Failure::Lost { .. }));
        if let Some(comms) = comms {
            if lost {
                // The receive thread of the lost peer's connection never ends; this process
                // is about to exit.
                std::mem::forget(comms);
            } else {
                close_comms(comms);
            }
        }
        self.close();
    }

    fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for c in self.control.iter().flatten() {
            if let Ok(c) = c.lock() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.close();
    }
}

/// Joins timely's network threads, which end once every peer's workers are done, but not
/// for longer than [`COMMS_CLOSE`].
fn close_comms(comms: CommsGuard) {
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("waterline:comms-close".into())
        .spawn(move || {
            drop(comms);
            let _ = done.send(());
        });
    if spawned.is_ok() && wait.recv_timeout(COMMS_CLOSE).is_err() {
        tracing::warn!(
            timeout = ?COMMS_CLOSE,
            "timely's network threads did not finish; leaving them"
        );
    }
}

fn read_loop(shared: &Shared, peer: usize, mut stream: TcpStream) {
    loop {
        match read_message(&mut stream) {
            Ok(Message::Barrier(name)) => shared.update(|s| {
                s.barriers.entry(name).or_default().insert(peer);
            }),
            Ok(Message::Plan(plan)) => shared.update(|s| s.plan = Some(plan)),
            Ok(Message::Abort { reason, retriable }) => shared.fail(Failure::Failed {
                process: peer,
                reason,
                retriable,
            }),
            Ok(Message::Stop) => {
                if !shared.stop.swap(true, Ordering::SeqCst) {
                    tracing::info!(peer, "a stop was requested on another process; stopping");
                }
                shared.changed.notify_all();
            }
            Ok(Message::Finished) => shared.update(|s| {
                s.finished.insert(peer);
            }),
            Ok(Message::Heartbeat | Message::Hello(_)) => {}
            Err(e) => {
                let why = match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        "its connection closed: it exited, crashed or was killed".to_string()
                    }
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                        "nothing heard from it for {PEER_TIMEOUT:?}: its host is down or the \
                         network to it is cut"
                    ),
                    _ => format!("its control connection failed: {e}"),
                };
                shared.fail(Failure::Lost { process: peer, why });
                return;
            }
        }
    }
}

fn heartbeat_loop(
    shared: &Shared,
    writers: &[Option<Arc<Mutex<TcpStream>>>],
    shutdown: &AtomicBool,
) {
    let mut last_beat = Instant::now();
    let mut stop_sent = false;
    while !shared.closing.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        let stop = !stop_sent && shutdown.load(Ordering::SeqCst);
        let beat = last_beat.elapsed() >= HEARTBEAT;
        if !(stop || beat) {
            continue;
        }
        if stop {
            stop_sent = true;
            shared.stop.store(true, Ordering::SeqCst);
            shared.changed.notify_all();
        }
        if beat {
            last_beat = Instant::now();
        }
        let finished = shared.lock().finished.clone();
        for (j, w) in writers.iter().enumerate() {
            let Some(w) = w else { continue };
            if finished.contains(&j) {
                continue;
            }
            let mut w = w.lock().expect("no thread panics holding a connection");
            if stop {
                let _ = write_message(&mut w, &Message::Stop);
            }
            if beat {
                let _ = write_message(&mut w, &Message::Heartbeat);
            }
        }
    }
}

/// Accepts the connections waiting on `listener` from processes after `me`.
fn accept_ready(listener: &TcpListener, me: usize, peers: &mut BTreeMap<usize, Pending>) {
    loop {
        let (mut stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                return;
            }
        };
        let preamble = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(5))))
            .and_then(|()| read_preamble(&mut stream));
        match preamble {
            Ok((kind, j)) if j > me && peers.contains_key(&j) => {
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_nodelay(true);
                let slot = peers.get_mut(&j).expect("checked above");
                match kind {
                    CONTROL => slot.control = Some(stream),
                    _ => slot.data = Some(stream),
                }
            }
            Ok((_, j)) => tracing::warn!(
                from = %from,
                claims = j,
                "a connection claims to be a process that does not connect to this one; closed"
            ),
            Err(e) => tracing::warn!(from = %from, error = %e, "not a waterline process; closed"),
        }
    }
}

/// One attempt at both connections to the process at `address` (listed before `me`).
fn connect(address: &str, me: usize, pending: &mut Pending) {
    let open = |kind: u8| -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
        for a in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_nodelay(true)?;
                    let mut preamble = PREAMBLE.to_vec();
                    preamble.push(kind);
                    preamble.extend_from_slice(&(me as u32).to_be_bytes());
                    s.write_all(&preamble)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match open(CONTROL).and_then(|c| open(DATA).map(|d| (c, d))) {
        Ok((c, d)) => {
            pending.control = Some(c);
            pending.data = Some(d);
        }
        Err(e) => pending.last_error = Some(e.to_string()),
    }
}

fn missing(peers: &BTreeMap<usize, Pending>, hosts: &[String], me: usize, mine: &str) -> String {
    peers
        .iter()
        .filter(|(_, p)| p.control.is_none() || p.data.is_none())
        .map(|(j, p)| {
            let address = &hosts[*j];
            if *j < me {
                format!(
                    "process {j} at {address} not reachable ({})",
                    p.last_error.as_deref().unwrap_or("no answer")
                )
            } else {
                format!("process {j} at {address} has not connected to this process at {mine}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn read_preamble(stream: &mut TcpStream) -> io::Result<(u8, usize)> {
    let mut bytes = [0u8; PREAMBLE.len() + 5];
    stream.read_exact(&mut bytes)?;
    if &bytes[..PREAMBLE.len()] != PREAMBLE || bytes[PREAMBLE.len()] > DATA {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad preamble"));
    }
    let mut process = [0u8; 4];
    process.copy_from_slice(&bytes[PREAMBLE.len() + 1..]);
    Ok((bytes[PREAMBLE.len()], u32::from_be_bytes(process) as usize))
}

fn write_message(stream: &mut TcpStream, message: &Message) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let length = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("a control message over 256 MiB"))?;
    let mut frame = length.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

fn read_message(stream: &mut TcpStream) -> io::Result<Message> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a control message of {length} bytes"),
        ));
    }
    let mut body = vec![0u8; length as usize];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_ports(n: usize) -> Vec<String> {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect()
    }

    fn layout(hosts: &[String], process: usize, timeout: Duration) -> Layout {
        Layout {
            processes: hosts.len(),
            process,
            hosts: hosts.to_vec(),
            listen: None,
            connect_timeout: timeout,
        }
    }

    fn hello(hosts: &[String], process: usize) -> Hello {
        Hello {
            protocol: super::super::PROTOCOL,
            process,
            processes: hosts.len(),
            workers: 1,
            app_id: "app".into(),
            dataflow: "d".into(),
            fingerprint: "f".into(),
            hosts: hosts.to_vec(),
            bounded: false,
        }
    }

    fn join_all(hosts: &[String], hellos: Vec<Hello>) -> Vec<Result<Mesh, ClusterError>> {
        let handles: Vec<_> = hellos
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let l = layout(hosts, i, Duration::from_secs(10));
                std::thread::spawn(move || Mesh::join(&l, h, Arc::new(AtomicBool::new(false))))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join does not panic"))
            .collect()
    }

    #[test]
    fn processes_meet_pass_a_barrier_and_share_a_plan() {
        let hosts = free_ports(3);
        let meshes: Vec<Mesh> = join_all(&hosts, (0..3).map(|i| hello(&hosts, i)).collect())
            .into_iter()
            .map(|m| m.expect("every process meets"))
            .collect();
        std::thread::scope(|s| {
            for m in &meshes {
                s.spawn(move || m.barrier("fenced").expect("the barrier passes"));
            }
        });
        meshes[0].share_plan(&vec![7, 8, 9]).expect("shared");
        for m in &meshes[1..] {
            assert_eq!(
                m.receive_plan::<Vec<i32>>().expect("received"),
                vec![7, 8, 9]
            );
        }
        // Process 2 fails: the others learn why, and their workers are told to stop.
        meshes[2].finish(Some(("broker on fire".into(), true)));
        for m in &meshes[..2] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while m.failure().is_none() {
                assert!(Instant::now() < deadline, "the failure arrives");
                std::thread::sleep(Duration::from_millis(10));
            }
            let e = m.failure().expect("a failure");
            assert!(e.is_retriable(), "{e}");
            assert!(
                e.to_string().contains("process 2") && e.to_string().contains("broker on fire"),
                "{e}"
            );
            assert!(m.abort_flag().load(Ordering::SeqCst));
        }
    }

    #[test]
    fn a_peer_that_goes_away_is_lost_by_name() {
        let hosts = free_ports(2);
        let mut meshes: Vec<Mesh> = join_all(&hosts, (0..2).map(|i| hello(&hosts, i)).collect())
            .into_iter()
            .map(|m| m.expect("both meet"))
            .collect();
        let gone = meshes.pop().expect("two");
        // Without `finish`, as a crash: its connections just close.
        drop(gone);
        let e = meshes[0].barrier("never").expect_err("the peer is gone");
        let text = e.to_string();
        assert!(!e.is_retriable());
        assert!(
            text.contains(&format!("process 1 at {} was lost", hosts[1])),
            "{text}"
        );
        assert!(text.contains("connection closed"), "{text}");
    }

    #[test]
    fn a_stop_on_one_process_stops_the_others() {
        let hosts = free_ports(2);
        let stop0 = Arc::new(AtomicBool::new(false));
        let l0 = layout(&hosts, 0, Duration::from_secs(10));
        let l1 = layout(&hosts, 1, Duration::from_secs(10));
        let h0 = hello(&hosts, 0);
        let h1 = hello(&hosts, 1);
        let s0 = Arc::clone(&stop0);
        let t = std::thread::spawn(move || Mesh::join(&l0, h0, s0));
        let m1 = Mesh::join(&l1, h1, Arc::new(AtomicBool::new(false))).expect("meets");
        let m0 = t.join().expect("no panic").expect("meets");
        stop0.store(true, Ordering::SeqCst);
        assert!(matches!(m1.barrier("b"), Err(ClusterError::Stopped)));
        assert!(m1.stop_flag().load(Ordering::SeqCst));
        assert!(m0.stop_flag().load(Ordering::SeqCst));
    }

    #[test]
    fn a_different_job_is_refused_naming_what_differs() {
        let hosts = free_ports(2);
        let other = Hello {
            app_id: "other".into(),
            ..hello(&hosts, 1)
        };
        let results = join_all(&hosts, vec![hello(&hosts, 0), other]);
        let e = results[0].as_ref().err().expect("refused").to_string();
        assert!(
            e.contains(&format!("process 1 at {}", hosts[1])) && e.contains("app id is `other`"),
            "{e}"
        );
    }

    #[test]
    fn an_unreachable_peer_is_named_after_the_timeout() {
        let hosts = free_ports(3);
        let started = Instant::now();
        let l = layout(&hosts, 1, Duration::from_millis(800));
        let e = Mesh::join(&l, hello(&hosts, 1), Arc::new(AtomicBool::new(false)))
            .err()
            .expect("nobody else runs");
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = e.to_string();
        assert!(
            text.contains(&format!("process 0 at {} not reachable", hosts[0])),
            "{text}"
        );
        assert!(
            text.contains(&format!("process 2 at {} has not connected", hosts[2])),
            "{text}"
        );
        assert!(text.contains("--cluster-timeout"), "{text}");
    }

    #[test]
    fn a_busy_address_is_reported_with_the_process() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let hosts = vec![
            taken.local_addr().expect("addr").to_string(),
            "127.0.0.1:9".to_string(),
        ];
        let l = layout(&hosts, 0, Duration::from_secs(1));
        let e = Mesh::join(&l, hello(&hosts, 0), Arc::new(AtomicBool::new(false)))
            .err()
            .expect("the port is taken");
        assert!(
            e.to_string()
                .contains(&format!("process 0 cannot listen on {}", hosts[0])),
            "{e}"
        );
    }
}
