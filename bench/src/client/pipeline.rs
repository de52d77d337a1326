//! A pipelined produce connection: a writer thread sends requests as jobs
//! arrive (up to `max_in_flight` unanswered, like a Kafka producer's
//! `max.in.flight.requests.per.connection`), a reader thread matches
//! responses by correlation id. Every job ends in exactly one [`Outcome`].

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};

use super::connection::{topic_name, Connection};
use super::{wire, ClientError, Versions};

/// One batch to produce to one partition.
#[derive(Debug, Clone)]
pub struct ProduceJob {
    pub partition: i32,
    /// When the open-loop schedule wanted it sent.
    pub intended: Instant,
    /// When it was first written to a socket (kept across retries).
    pub first_sent: Option<Instant>,
    /// One encoded RecordBatch.
    pub records: Bytes,
    pub record_count: u32,
    /// Sends so far (a retry after NOT_LEADER_OR_FOLLOWER adds one).
    pub attempts: u32,
    /// Whether it already waited for a partition without a known leader.
    pub waited_for_leader: bool,
}

/// What happened to a job.
#[derive(Debug)]
pub enum Outcome {
    /// The broker answered; `error_code` 0 means acknowledged.
    Answered {
        broker: i32,
        job: ProduceJob,
        acked: Instant,
        error_code: i16,
        encode: Duration,
    },
    /// acks=0: written; no answer will come.
    Written {
        broker: i32,
        job: ProduceJob,
        encode: Duration,
    },
    /// The connection failed or closed before an answer.
    Lost {
        broker: i32,
        job: ProduceJob,
        error: String,
    },
}

/// What every request of a run carries.
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    pub topic: String,
    pub acks: i16,
    pub timeout: Duration,
    pub max_in_flight: usize,
}

struct InFlight {
    job: ProduceJob,
    encode: Duration,
}

#[derive(Default)]
struct Pending {
    jobs: HashMap<i32, InFlight>,
    /// Set once the connection failed: the writer stops waiting for room.
    broken: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    room: Condvar,
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock means another thread of this connection panicked;
        // the data (a map of jobs) is still consistent enough to drain.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A produce connection to one broker.
pub struct PipelinedConnection {
    pub broker: i32,
    pub version: i16,
    jobs: Option<Sender<ProduceJob>>,
    stream: TcpStream,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl PipelinedConnection {
    /// Connects to `addr`, negotiates versions and starts the writer and
    /// reader threads; outcomes go to `outcomes`.
    pub fn open(
        broker: i32,
        addr: &str,
        connect_timeout: Duration,
        settings: Arc<ProduceSettings>,
        outcomes: Sender<Outcome>,
    ) -> Result<PipelinedConnection, ClientError> {
        let conn = Connection::connect(addr, connect_timeout)?;
        let version = Versions::require(conn.versions.produce, "Produce")?;
        let stream = conn.into_stream();
        stream.set_read_timeout(None)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            room: Condvar::new(),
            closing: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let stream = stream.try_clone()?;
            let shared = shared.clone();
            let settings = settings.clone();
            let outcomes = outcomes.clone();
            std::thread::Builder::new()
                .name(format!("produce-w-{broker}"))
                .spawn(move || {
                    write_loop(broker, version, stream, rx, shared, settings, outcomes)
                })?
        };
        let reader = {
            let stream = stream.try_clone()?;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("produce-r-{broker}"))
                .spawn(move || read_loop(broker, version, stream, shared, settings, outcomes))?
        };
        Ok(PipelinedConnection {
            broker,
            version,
            jobs: Some(tx),
            stream,
            shared,
            writer: Some(writer),
            reader: Some(reader),
        })
    }

    /// A handle to queue jobs on this connection.
    pub fn sender(&self) -> Option<Sender<ProduceJob>> {
        self.jobs.clone()
    }

    /// Jobs written but not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Whether the connection failed (its jobs come back as lost).
    pub fn is_broken(&self) -> bool {
        self.shared.lock().broken
    }

    /// Stops both threads. Jobs still unanswered come out as [`Outcome::Lost`].
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.jobs = None;
        let _ = self.stream.shutdown(Shutdown::Both);
        {
            let mut pending = self.shared.lock();
            pending.broken = true;
        }
        self.shared.room.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for PipelinedConnection {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn encode_produce(
    settings: &ProduceSettings,
    version: i16,
    correlation: i32,
    job: &ProduceJob,
) -> Result<Bytes, ClientError> {
    let request = ProduceRequest::default()
        .with_acks(settings.acks)
        .with_timeout_ms(i32::try_from(settings.timeout.as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(&settings.topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(job.partition)
                .with_records(Some(job.records.clone()))])]);
    wire::encode_request(&request, version, correlation)
}

fn write_loop(
    broker: i32,
    version: i16,
    mut stream: TcpStream,
    jobs: Receiver<ProduceJob>,
    shared: Arc<Shared>,
    settings: Arc<ProduceSettings>,
    outcomes: Sender<Outcome>,
) {
    let mut correlation: i32 = 0;
    let mut failure: Option<String> = None;
    loop {
        let mut job = match jobs.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.closing.load(Ordering::SeqCst) {
                    failure.get_or_insert_with(|| "connection closed by the benchmark".to_string());
                    // Whatever is still queued ends as lost, then stop.
                    while let Ok(job) = jobs.try_recv() {
                        let error = failure.clone().unwrap_or_default();
                        let _ = outcomes.send(Outcome::Lost { broker, job, error });
                    }
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Some(error) = &failure {
            let _ = outcomes.send(Outcome::Lost {
                broker,
                job,
                error: error.clone(),
            });
            continue;
        }
        correlation = correlation.wrapping_add(1);
        let started = Instant::now();
        let frame = match encode_produce(&settings, version, correlation, &job) {
            Ok(f) => f,
            Err(e) => {
                let _ = outcomes.send(Outcome::Lost {
                    broker,
                    job,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let encode = started.elapsed();
        if settings.acks == 0 {
            job.first_sent.get_or_insert(Instant::now());
            job.attempts += 1;
            if let Err(e) = wire::write_frame(&mut stream, &frame) {
                let error = e.to_string();
                failure = Some(error.clone());
                let _ = outcomes.send(Outcome::Lost { broker, job, error });
            } else {
                let _ = outcomes.send(Outcome::Written {
                    broker,
                    job,
                    encode,
                });
            }
            continue;
        }
        {
            let mut pending = shared.lock();
            while pending.jobs.len() >= settings.max_in_flight && !pending.broken {
                pending = shared.room.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            if pending.broken {
                drop(pending);
                let error = "connection closed".to_string();
                failure = Some(error.clone());
                let _ = outcomes.send(Outcome::Lost { broker, job, error });
                continue;
            }
            // The send time is taken after waiting for room: a broker that
            // stops answering delays sends, and that shows as publish delay.
            job.first_sent.get_or_insert(Instant::now());
            job.attempts += 1;
            pending.jobs.insert(correlation, InFlight { job, encode });
        }
        if let Err(e) = wire::write_frame(&mut stream, &frame) {
            let error = e.to_string();
            tracing::debug!(broker, %error, "produce connection failed while writing");
            failure = Some(error.clone());
            fail_pending(broker, &shared, &outcomes, &error);
        }
    }
}

/// Ends every unanswered job of a broken connection as lost.
fn fail_pending(broker: i32, shared: &Shared, outcomes: &Sender<Outcome>, error: &str) {
    let drained: Vec<InFlight> = {
        let mut pending = shared.lock();
        pending.broken = true;
        pending.jobs.drain().map(|(_, v)| v).collect()
    };
    shared.room.notify_all();
    for f in drained {
        let _ = outcomes.send(Outcome::Lost {
            broker,
            job: f.job,
            error: error.to_string(),
        });
    }
}

fn read_loop(
    broker: i32,
    version: i16,
    mut stream: TcpStream,
    shared: Arc<Shared>,
    settings: Arc<ProduceSettings>,
    outcomes: Sender<Outcome>,
) {
    loop {
        let frame = wire::read_frame(&mut stream);
        let acked = Instant::now();
        let mut body = match frame {
            Ok(Some(body)) => body,
            Ok(None) => {
                fail_pending(
                    broker,
                    &shared,
                    &outcomes,
                    "connection closed by the broker",
                );
                return;
            }
            Err(e) => {
                let error = if shared.closing.load(Ordering::SeqCst) {
                    "connection closed by the benchmark".to_string()
                } else {
                    e.to_string()
                };
                fail_pending(broker, &shared, &outcomes, &error);
                return;
            }
        };
        let correlation = match wire::decode_response_header(&mut body, ApiKey::Produce, version) {
            Ok(c) => c,
            Err(e) => {
                fail_pending(broker, &shared, &outcomes, &e.to_string());
                return;
            }
        };
        let Some(flight) = ({
            let taken = shared.lock().jobs.remove(&correlation);
            shared.room.notify_one();
            taken
        }) else {
            tracing::warn!(
                broker,
                correlation,
                "produce response for no request in flight"
            );
            continue;
        };
        let error_code = match wire::decode_response::<ProduceRequest>(&mut body, version) {
            Ok(response) => partition_error(&response, &settings.topic, flight.job.partition),
            Err(e) => {
                tracing::warn!(broker, error = %e, "undecodable produce response");
                kafka_protocol::ResponseError::UnknownServerError.code()
            }
        };
        let _ = outcomes.send(Outcome::Answered {
            broker,
            job: flight.job,
            acked,
            error_code,
            encode: flight.encode,
        });
    }
}

/// The error code the response gives `partition`; a response that leaves
/// the partition out is an unknown server error.
fn partition_error(response: &ProduceResponse, topic: &str, partition: i32) -> i16 {
    response
        .responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic || t.name.0.is_empty())
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .map(|p| p.error_code)
        .unwrap_or(kafka_protocol::ResponseError::UnknownServerError.code())
}
