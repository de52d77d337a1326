//! Sends mutated frames to a broker's Kafka listener over many connections, pipelined within a
//! window, and holds the broker to one rule: every frame is answered, or its connection is closed
//! by the broker, within the timeout (plus whatever wait the request itself legitimately asked
//! for, e.g. a Fetch's max_wait_ms). A request left unanswered past that on an open connection is
//! a failure, reported with its frame.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use super::generate::Template;
use super::mutate::{self, Frame};
use super::rng::Rng;

/// Largest response frame accepted; anything larger is a broken response.
const MAX_RESPONSE: usize = 256 << 20;
/// How often a waiting connection looks at its deadlines.
const POLL: Duration = Duration::from_millis(50);

/// What the runner needs to know.
pub struct Plan {
    pub address: String,
    pub templates: Vec<Template>,
    pub advertised: Vec<(i16, i16, i16)>,
    pub frames: u64,
    pub connections: usize,
    pub window: usize,
    pub timeout: Duration,
    /// A request that asks the broker to wait longer than this is not waited for: its connection
    /// is dropped and counted as abandoned.
    pub max_declared_wait: Duration,
    pub seed: Rng,
    pub deadline: Instant,
}

impl Plan {
    /// Past the deadline, or Ctrl-C / SIGTERM: send nothing more.
    pub fn over(&self) -> bool {
        Instant::now() >= self.deadline || chronik_bench::interrupt::interrupted()
    }
}

/// One broken rule.
#[derive(Debug, Clone)]
pub struct Failure {
    pub frame_no: u64,
    pub what: String,
    pub correlation: Option<i32>,
    pub frame: Vec<u8>,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub responses: AtomicU64,
    pub closes: AtomicU64,
    pub connections: AtomicU64,
    /// Requests the broker need not answer (Produce with acks=0), passed over by a later answer.
    pub unanswered_produce: AtomicU64,
    /// Connections dropped because their request asked for a wait longer than the cap.
    pub abandoned: AtomicU64,
    pub failures: AtomicU64,
    pub failed: Mutex<Vec<Failure>>,
    /// Frames that were sent behind one that made the broker close the connection, and so never
    /// reached it: sent again on another connection.
    retry: Mutex<Vec<u64>>,
}

impl Tally {
    /// Frames the broker dealt with: answered, passed over (acks=0), or closed on.
    pub fn settled(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
            + self.unanswered_produce.load(Ordering::Relaxed)
            + self.closes.load(Ordering::Relaxed)
    }

    fn has_retry(&self) -> bool {
        !self
            .retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn requeue(&self, frames: impl Iterator<Item = u64>) {
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(frames);
    }

    /// The next frame number to send: one sent into a closing connection first, then a new one.
    fn next_frame(&self, next: &AtomicU64) -> u64 {
        if let Some(n) = self.retry.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return n;
        }
        next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn fail(&self, failure: Failure) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.len() < 50 {
            failed.push(failure);
        }
    }
}

struct Outstanding {
    frame_no: u64,
    frame: Frame,
    sent: Instant,
    /// A Produce with acks=0 as the broker reads it: no answer comes.
    silent: bool,
}

/// Runs the plan on `plan.connections` threads; returns when every frame is sent and settled or
/// the deadline passes.
pub fn run(plan: Arc<Plan>, tally: Arc<Tally>) {
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..plan.connections)
        .map(|_| {
            let (plan, tally, next) = (plan.clone(), tally.clone(), next.clone());
            std::thread::spawn(move || worker(&plan, &tally, &next))
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            tally.fail(Failure {
                frame_no: 0,
                what: "a fuzzer thread panicked".into(),
                correlation: None,
                frame: Vec::new(),
            });
        }
    }
}

/// Frame number `n` of the run: the same for a seed whichever thread sends it.
pub fn frame(plan: &Plan, n: u64) -> Frame {
    let mut rng = plan.seed.fork(n);
    let template = rng.pick(&plan.templates);
    let correlation = (n % i32::MAX as u64) as i32;
    mutate::mutate(template, &plan.advertised, correlation, &mut rng)
}

fn worker(plan: &Plan, tally: &Tally, next: &AtomicU64) {
    let mut exhausted = false;
    while (!exhausted || tally.has_retry()) && !plan.over() {
        // Windows from 1 to plan.window: a deep pipeline, and connections where every frame
        // meets the broker fresh.
        let index = tally.connections.fetch_add(1, Ordering::Relaxed);
        let window = 1 + (index % plan.window.max(1) as u64) as usize;
        let mut conn = match Conn::open(&plan.address, window) {
            Ok(c) => c,
            Err(e) => {
                tally.fail(Failure {
                    frame_no: next.load(Ordering::Relaxed),
                    what: format!("cannot connect to {}: {e}", plan.address),
                    correlation: None,
                    frame: Vec::new(),
                });
                return;
            }
        };
        exhausted = conn.serve(plan, tally, next);
    }
}

struct Conn {
    stream: TcpStream,
    inbox: Vec<u8>,
    outstanding: VecDeque<Outstanding>,
    window: usize,
    /// Nothing more is sent (a framing frame went out, or the frames ran out).
    done_sending: bool,
    last_progress: Instant,
}

impl Conn {
    fn open(address: &str, window: usize) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            stream,
            inbox: Vec::new(),
            outstanding: VecDeque::new(),
            window,
            done_sending: false,
            last_progress: Instant::now(),
        })
    }

    /// Drives one connection until it is closed or settled; true when the run's frames are spent.
    fn serve(&mut self, plan: &Plan, tally: &Tally, next: &AtomicU64) -> bool {
        let mut exhausted = false;
        loop {
            while !self.done_sending && self.outstanding.len() < self.window {
                let n = tally.next_frame(next);
                if n >= plan.frames || plan.over() {
                    exhausted = true;
                    self.done_sending = true;
                    break;
                }
                let frame = frame(plan, n);
                if self.stream.write_all(&frame.bytes).is_err() {
                    // Closed under us: the broker dropped the connection (it may, after bad input).
                    tally.requeue(std::iter::once(n));
                    self.closed(tally);
                    return exhausted;
                }
                tally.sent.fetch_add(1, Ordering::Relaxed);
                if frame.last {
                    self.done_sending = true;
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
                if self.outstanding.is_empty() {
                    self.last_progress = Instant::now();
                }
                let silent = frame.key == ApiKey::Produce && may_go_unanswered(&frame);
                self.outstanding.push_back(Outstanding {
                    frame_no: n,
                    frame,
                    sent: Instant::now(),
                    silent,
                });
            }
            if self.outstanding.is_empty() {
                // Settled: every frame answered. Start over on a fresh connection now and then
                // so that connection setup is exercised too.
                return exhausted;
            }
            match self.read_some() {
                Ok(true) => {
                    if !self.take_responses(tally) {
                        return exhausted;
                    }
                }
                Ok(false) => {
                    self.closed(tally);
                    return exhausted;
                }
                Err(_) => {
                    if !self.check_deadline(plan, tally) {
                        self.requeue_behind_head(tally);
                        return exhausted;
                    }
                }
            }
        }
    }

    /// The broker closed the connection: the oldest unanswered frame is the one it refused; those
    /// behind it never reached it and go again on another connection.
    fn closed(&mut self, tally: &Tally) {
        if !self.outstanding.is_empty() {
            tally.closes.fetch_add(1, Ordering::Relaxed);
        }
        self.requeue_behind_head(tally);
    }

    fn requeue_behind_head(&mut self, tally: &Tally) {
        tally.requeue(self.outstanding.drain(..).skip(1).map(|o| o.frame_no));
    }

    /// Reads what has arrived: Ok(true) for bytes, Ok(false) when the broker closed, Err on a
    /// read timeout.
    fn read_some(&mut self) -> Result<bool, ()> {
        let mut buf = [0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.inbox.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(()),
            // Reset by the broker: a close.
            Err(_) => Ok(false),
        }
    }

    /// Matches whole responses in the inbox to requests; false if the connection must end.
    fn take_responses(&mut self, tally: &Tally) -> bool {
        while self.inbox.len() >= 4 {
            let len =
                u32::from_be_bytes([self.inbox[0], self.inbox[1], self.inbox[2], self.inbox[3]])
                    as usize;
            if !(4..=MAX_RESPONSE).contains(&len) {
                self.fail_head(tally, format!("response frame with length {len}"));
                self.requeue_behind_head(tally);
                return false;
            }
            if self.inbox.len() < 4 + len {
                return true;
            }
            let correlation =
                i32::from_be_bytes([self.inbox[4], self.inbox[5], self.inbox[6], self.inbox[7]]);
            self.inbox.drain(..4 + len);
            self.last_progress = Instant::now();
            tally.responses.fetch_add(1, Ordering::Relaxed);
            let Some(at) = self
                .outstanding
                .iter()
                .position(|o| o.frame.correlation == Some(correlation))
            else {
                self.fail_head(
                    tally,
                    format!("response with correlation id {correlation}, which no request had"),
                );
                self.requeue_behind_head(tally);
                return false;
            };
            for skipped in self.outstanding.drain(..at).collect::<Vec<_>>() {
                if skipped.silent {
                    tally.unanswered_produce.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.fail(failure(
                        &skipped,
                        format!(
                            "no answer, yet the answer to a later request (correlation id \
                             {correlation}) came and the connection stayed open"
                        ),
                    ));
                }
            }
            self.outstanding.pop_front();
        }
        true
    }

    /// The oldest request's deadline; false (after recording why) if the connection must end.
    fn check_deadline(&mut self, plan: &Plan, tally: &Tally) -> bool {
        // Nothing will answer an acks=0 Produce: once nothing arrives, it is settled.
        while self.outstanding.front().is_some_and(|o| o.silent) {
            self.outstanding.pop_front();
            tally.unanswered_produce.fetch_add(1, Ordering::Relaxed);
            self.last_progress = Instant::now();
        }
        let Some(head) = self.outstanding.front() else {
            return true;
        };
        let since = head.sent.max(self.last_progress);
        if since.elapsed() < plan.timeout {
            return true;
        }
        let asked = declared_wait(&head.frame);
        if asked > plan.max_declared_wait {
            tally.abandoned.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if since.elapsed() < plan.timeout + asked {
            return true;
        }
        let ids: Vec<String> = self
            .outstanding
            .iter()
            .map(|o| o.frame.correlation.map_or("-".into(), |c| c.to_string()))
            .collect();
        let what = format!(
            "no answer and no close within {:?} (request asked for {asked:?}); correlation ids \
             still open on the connection: {}",
            since.elapsed(),
            ids.join(",")
        );
        self.fail_head(tally, what);
        false
    }

    fn fail_head(&mut self, tally: &Tally, what: String) {
        match self.outstanding.front() {
            Some(head) => tally.fail(failure(head, what)),
            None => tally.fail(Failure {
                frame_no: 0,
                what,
                correlation: None,
                frame: Vec::new(),
            }),
        }
    }
}

fn failure(o: &Outstanding, what: String) -> Failure {
    Failure {
        frame_no: o.frame_no,
        what: format!(
            "{:?} v{} ({}): {what}",
            o.frame.key, o.frame.version, o.frame.mutation
        ),
        correlation: o.frame.correlation,
        frame: o.frame.bytes.clone(),
    }
}

/// The request as the broker reads it, if it reads it at all.
fn decode(frame: &Frame) -> Option<RequestKind> {
    let mut body = Bytes::copy_from_slice(frame.bytes.get(4..)?);
    if body.len() < 8 {
        return None;
    }
    let key = ApiKey::try_from(i16::from_be_bytes([body[0], body[1]])).ok()?;
    let version = i16::from_be_bytes([body[2], body[3]]);
    let valid = key.valid_versions();
    if !(valid.min..=valid.max).contains(&version) {
        return None;
    }
    RequestHeader::decode(&mut body, key.request_header_version(version)).ok()?;
    RequestKind::decode(key, &mut body, version).ok()
}

/// Whether a Produce may get no response: acks=0, as the broker reads it (or it does not read).
fn may_go_unanswered(frame: &Frame) -> bool {
    match decode(frame) {
        Some(RequestKind::Produce(p)) => p.acks == 0,
        // One the broker cannot read must be refused by closing, not passed over.
        _ => false,
    }
}

/// How long the request itself asks the broker to wait before answering.
pub fn declared_wait(frame: &Frame) -> Duration {
    let ms = match decode(frame) {
        Some(RequestKind::Fetch(r)) => r.max_wait_ms,
        Some(RequestKind::Produce(r)) => r.timeout_ms,
        Some(RequestKind::CreateTopics(r)) => r.timeout_ms,
        Some(RequestKind::DeleteTopics(r)) => r.timeout_ms,
        Some(RequestKind::CreatePartitions(r)) => r.timeout_ms,
        Some(RequestKind::ListOffsets(r)) => r.timeout_ms,
        _ => 0,
    };
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Lowercase hex, for reports.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::fuzz::generate::{self, Target};
    use std::net::TcpListener;

    /// A plan of `frames` ApiVersions-based frames against `address`.
    fn plan(address: String, frames: u64) -> Plan {
        let target = Target {
            topic: "fz".into(),
            topic_id: uuid::Uuid::nil(),
            partitions: 1,
            broker_id: 1,
        };
        let advertised = vec![(18, 0, 4)];
        Plan {
            address,
            templates: generate::templates(&advertised, &target, &Rng::new(1)),
            advertised,
            frames,
            connections: 2,
            window: 4,
            timeout: Duration::from_millis(300),
            max_declared_wait: Duration::from_secs(60),
            seed: Rng::new(3),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    /// A fake broker: accepts connections and hands each to `serve`.
    fn fake_broker(serve: fn(TcpStream)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
        address
    }

    #[test]
    fn a_broker_that_neither_answers_nor_closes_fails_the_run() {
        let address = fake_broker(|mut stream| {
            // Read everything, answer nothing, never close (even after the client's end of stream).
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    std::thread::sleep(Duration::from_secs(30));
                    return;
                }
            }
        });
        let tally = Arc::new(Tally::default());
        run(Arc::new(plan(address, 4)), tally.clone());
        let failed = tally.failed.lock().unwrap();
        assert!(!failed.is_empty());
        assert!(
            failed[0].what.contains("no answer and no close"),
            "{}",
            failed[0].what
        );
    }

    #[test]
    fn a_broker_that_closes_on_every_frame_passes() {
        let address = fake_broker(|mut stream| {
            let mut buf = [0u8; 1];
            let _ = stream.read(&mut buf);
        });
        let tally = Arc::new(Tally::default());
        run(Arc::new(plan(address, 50)), tally.clone());
        assert_eq!(tally.failures.load(Ordering::Relaxed), 0);
        // Every frame settles (closed on), frames behind a closing one included.
        assert_eq!(tally.settled(), 50);
    }
}
