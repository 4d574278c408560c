//! The data connection between two processes, as timely's network threads see it.
//!
//! timely's receive thread panics when its connection ends without the zero-length
//! header that closes a stream cleanly, and its send thread panics when a write fails;
//! the panics poison the queues they feed, and the workers then panic too. A peer
//! killed with SIGKILL does exactly that. [`WatchedStream`] turns it into a report
//! instead: it follows timely's framing (a 48-byte header whose fifth big-endian `u64` is
//! the body's length; length 0 ends the stream) to tell a clean end from a lost peer,
//! and on a loss it reports the peer and then holds the receive thread (which has
//! nothing left to read) rather than return the error; writes to a lost peer are
//! dropped. The mesh then stops the workers, which exit cleanly.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use timely::communication::allocator::zero_copy::stream::Stream;

/// Called once per loss with the peer's process index and what was seen.
pub type LossReport = Arc<dyn Fn(usize, String) + Send + Sync>;

/// Bytes of a timely message header: six big-endian `u64`s.
const HEADER_BYTES: usize = 48;
/// Where the body length sits in the header (the fifth field).
const LENGTH_AT: usize = 32;

/// Where a byte stream is within timely's framing.
#[derive(Clone, Debug)]
struct Framing {
    header: [u8; HEADER_BYTES],
    have: usize,
    body: u64,
    clean: bool,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing {
            header: [0; HEADER_BYTES],
            have: 0,
            body: 0,
            clean: false,
        }
    }
}

impl Framing {
    fn absorb(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.clean {
            if self.body > 0 {
                let n = (self.body.min(bytes.len() as u64)) as usize;
                self.body -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_BYTES - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_BYTES {
                self.have = 0;
                let mut length = [0u8; 8];
                length.copy_from_slice(&self.header[LENGTH_AT..LENGTH_AT + 8]);
                match u64::from_be_bytes(length) {
                    0 => self.clean = true,
                    n => self.body = n,
                }
            }
        }
    }
}

/// A data connection to process `peer` that reports its loss instead of failing timely.
pub struct WatchedStream {
    inner: TcpStream,
    peer: usize,
    report: LossReport,
    framing: Framing,
    lost: bool,
}

impl WatchedStream {
    /// Wraps the data connection to process `peer`.
    pub fn new(inner: TcpStream, peer: usize, report: LossReport) -> WatchedStream {
        WatchedStream {
            inner,
            peer,
            report,
            framing: Framing::default(),
            lost: false,
        }
    }

    fn lose(&mut self, why: String) {
        if !self.lost {
            self.lost = true;
            (self.report)(self.peer, why);
        }
    }

    /// Holds the receive thread of a lost connection until the process exits: timely
    /// would panic on any answer but more data, and there is none.
    fn hold(&mut self) -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl Read for WatchedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(0) if self.framing.clean => return Ok(0),
                Ok(0) => {
                    self.lose("its connection closed: it exited, crashed or was killed".into());
                    self.hold()
                }
                Ok(n) => {
                    self.framing.absorb(&buf[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.framing.clean => return Ok(0),
                Err(e) => {
                    self.lose(format!("reading from it failed: {e}"));
                    self.hold()
                }
            }
        }
    }
}

impl Write for WatchedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.lost {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.lose(format!("writing to it failed: {e}"));
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.lost
            && let Err(e) = self.inner.flush()
        {
            self.lose(format!("writing to it failed: {e}"));
        }
        Ok(())
    }
}

impl Stream for WatchedStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(WatchedStream {
            inner: self.inner.try_clone()?,
            peer: self.peer,
            report: Arc::clone(&self.report),
            framing: self.framing.clone(),
            lost: self.lost,
        })
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        // A peer that is gone cannot be told; the loss was reported already.
        let _ = self.inner.shutdown(how);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::time::Duration;
    use timely::communication::networking::MessageHeader;

    fn header(length: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        MessageHeader {
            channel: 3,
            source: 1,
            target_lower: 0,
            target_upper: 2,
            length,
            seqno: 9,
        }
        .write_to(&mut bytes)
        .expect("write to a vec");
        bytes
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (b, _) = listener.accept().expect("accept");
        (a, b)
    }

    type Seen = Arc<Mutex<Vec<(usize, String)>>>;

    fn recorder() -> (LossReport, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let report: LossReport = Arc::new(move |peer, why| {
            log.lock().expect("no panics").push((peer, why));
        });
        (report, seen)
    }

    #[test]
    fn framing_follows_timely_headers() {
        assert_eq!(header(0).len(), HEADER_BYTES);
        let mut f = Framing::default();
        let mut bytes = header(5);
        bytes.extend_from_slice(b"hello");
        bytes.extend(header(0));
        // Fed one byte at a time: a header split across reads is still read right.
        for b in &bytes[..bytes.len() - 1] {
            f.absorb(std::slice::from_ref(b));
            assert!(!f.clean);
        }
        f.absorb(&bytes[bytes.len() - 1..]);
        assert!(f.clean);
        // A zero body byte inside a message is not an end.
        let mut f = Framing::default();
        let mut bytes = header(HEADER_BYTES);
        bytes.extend(vec![0u8; HEADER_BYTES]);
        f.absorb(&bytes);
        assert!(!f.clean);
    }

    #[test]
    fn a_clean_end_reads_as_the_end() {
        let (mut a, b) = pair();
        let (report, seen) = recorder();
        let mut watched = WatchedStream::new(b, 1, report);
        let mut bytes = header(3);
        bytes.extend_from_slice(b"abc");
        bytes.extend(header(0));
        a.write_all(&bytes).expect("write");
        drop(a);
        let mut got = Vec::new();
        watched.read_to_end(&mut got).expect("a clean end");
        assert_eq!(got, bytes);
        assert!(seen.lock().expect("no panics").is_empty());
    }

    #[test]
    fn a_lost_peer_is_reported_not_returned() {
        let (mut a, b) = pair();
        let (report, seen) = recorder();
        let mut watched = WatchedStream::new(b, 4, report);
        a.write_all(&header(10)).expect("write");
        drop(a); // mid-message, as a SIGKILL would
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while watched.read(&mut buf).is_ok() {}
            unreachable!("a lost connection never returns an error to timely");
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().expect("no panics").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the loss was reported"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = seen.lock().expect("no panics");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, 4);
        assert!(seen[0].1.contains("connection closed"), "{}", seen[0].1);
    }

    #[test]
    fn writes_to_a_lost_peer_are_dropped_after_one_report() {
        let (a, b) = pair();
        let (report, seen) = recorder();
        let mut watched = WatchedStream::new(b, 2, report);
        drop(a);
        // The first writes may still be accepted by the kernel; a later one fails.
        for _ in 0..1000 {
            assert!(watched.write_all(&[0u8; 4096]).is_ok());
            watched.flush().expect("flush never fails");
        }
        let seen = seen.lock().expect("no panics");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, 2);
    }
}
