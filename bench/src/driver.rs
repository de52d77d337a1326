//! The produce driver: routes each batch to its partition's leader, turns
//! every job outcome into a sample or a counted error, and follows
//! leadership changes (NOT_LEADER_OR_FOLLOWER, lost connections) by asking
//! Metadata again and resending to the new leader.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::pipeline::{Outcome, PipelinedConnection, ProduceJob, ProduceSettings};
use crate::client::{error_name, is_leadership_error, ClientError, ClusterMap, Connection};
use crate::report::ErrorCount;
use crate::stats::{self, Recorder};

/// How often Metadata may be asked again while batches wait for a leader.
const REFRESH_BACKOFF: Duration = Duration::from_millis(100);

/// Partition leaders and the job queues of the connections to them.
#[derive(Default)]
pub struct Routes {
    leaders: BTreeMap<i32, i32>,
    senders: BTreeMap<(i32, usize), Sender<ProduceJob>>,
    connections: usize,
}

impl Routes {
    fn sender_for(&self, partition: i32) -> Option<&Sender<ProduceJob>> {
        let broker = *self.leaders.get(&partition)?;
        let slot = partition.unsigned_abs() as usize % self.connections.max(1);
        self.senders.get(&(broker, slot))
    }
}

/// Hands jobs to the connection of their partition's leader; shared by the
/// pacer thread and the driver's retries.
#[derive(Clone)]
pub struct Dispatcher {
    routes: Arc<RwLock<Routes>>,
    outcomes: Sender<Outcome>,
}

impl Dispatcher {
    pub fn dispatch(&self, job: ProduceJob) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let unsent = match routes.sender_for(job.partition) {
            Some(sender) => match sender.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => (job, "connection closed"),
            },
            None => (job, "no leader known"),
        };
        let _ = self.outcomes.send(Outcome::Lost {
            broker: -1,
            job: unsent.0,
            error: unsent.1.to_string(),
        });
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Batches that reached an end (acknowledged or failed).
    pub finished_batches: u64,
    pub warmup_records: u64,
    pub measured_records: u64,
    pub failed_records: u64,
}

/// The produce side of a run.
pub struct Driver {
    settings: Arc<ProduceSettings>,
    connect_timeout: Duration,
    bootstrap: Vec<String>,
    meta: Option<Connection>,
    pub cluster: ClusterMap,
    routes: Arc<RwLock<Routes>>,
    conns: BTreeMap<(i32, usize), PipelinedConnection>,
    outcomes_tx: Sender<Outcome>,
    outcomes: Receiver<Outcome>,
    pub recorder: Recorder,
    /// Batches intended before this are warm-up.
    pub measure_from: Instant,
    /// When the last measured batch was acknowledged (sent, for acks=0): a run the cluster cannot keep
    /// up with ends here, after its schedule, and its throughput is counted over that longer time.
    pub last_measured_done: Option<Instant>,
    pub encode: Histogram<u64>,
    errors: BTreeMap<(Option<i16>, String), (u64, u64)>,
    retry: Vec<ProduceJob>,
    next_refresh: Instant,
    pub counts: Counts,
    closing: bool,
    /// Produce version of the first connection, for the report.
    pub produce_version: Option<i16>,
}

impl Driver {
    /// Connects to the cluster (trying each bootstrap address), reads the
    /// topic's leaders and opens the produce connections.
    pub fn connect(
        settings: ProduceSettings,
        bootstrap: &[String],
        connections: usize,
        connect_timeout: Duration,
        measure_from: Instant,
    ) -> Result<Driver, ClientError> {
        let (outcomes_tx, outcomes) = mpsc::channel();
        let mut driver = Driver {
            settings: Arc::new(settings),
            connect_timeout,
            bootstrap: bootstrap.to_vec(),
            meta: None,
            cluster: ClusterMap::default(),
            routes: Arc::new(RwLock::new(Routes {
                connections: connections.max(1),
                ..Routes::default()
            })),
            conns: BTreeMap::new(),
            outcomes_tx,
            outcomes,
            recorder: Recorder::default(),
            measure_from,
            last_measured_done: None,
            encode: stats::new_histogram(),
            errors: BTreeMap::new(),
            retry: Vec::new(),
            next_refresh: Instant::now(),
            counts: Counts::default(),
            closing: false,
            produce_version: None,
        };
        driver.refresh()?;
        Ok(driver)
    }

    /// A handle for the pacer.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher {
            routes: self.routes.clone(),
            outcomes: self.outcomes_tx.clone(),
        }
    }

    fn metadata(&mut self) -> Result<ClusterMap, ClientError> {
        let topic = self.settings.topic.clone();
        if let Some(conn) = self.meta.as_mut() {
            match conn.metadata(Some(&[topic.as_str()])) {
                Ok(md) => return Ok(ClusterMap::from_metadata(&md, &topic)),
                Err(e) => {
                    tracing::debug!(error = %e, "metadata connection failed; reconnecting");
                    self.meta = None;
                }
            }
        }
        let mut candidates: Vec<String> = self.bootstrap.clone();
        candidates.extend(self.cluster.brokers.values().cloned());
        let mut last = ClientError::Other("no broker address to ask".into());
        for addr in candidates {
            match Connection::connect(&addr, self.connect_timeout) {
                Ok(mut conn) => match conn.metadata(Some(&[topic.as_str()])) {
                    Ok(md) => {
                        self.meta = Some(conn);
                        return Ok(ClusterMap::from_metadata(&md, &topic));
                    }
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks Metadata again, points routes at the current leaders and opens
    /// (or reopens) the connections they need.
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        let map = self.metadata()?;
        let connections = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .connections;
        // Broken connections are replaced.
        let broken: Vec<(i32, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_broken())
            .map(|(k, _)| *k)
            .collect();
        for key in broken {
            self.routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .senders
                .remove(&key);
            if let Some(c) = self.conns.remove(&key) {
                c.close();
            }
        }
        let mut wanted: Vec<(i32, usize)> = Vec::new();
        for (&p, l) in &map.partitions {
            if map.brokers.contains_key(&l.leader) {
                wanted.push((l.leader, p.unsigned_abs() as usize % connections));
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        for key in wanted {
            if self.conns.contains_key(&key) {
                continue;
            }
            let Some(addr) = map.brokers.get(&key.0) else {
                continue;
            };
            match PipelinedConnection::open(
                key.0,
                addr,
                self.connect_timeout,
                self.settings.clone(),
                self.outcomes_tx.clone(),
            ) {
                Ok(conn) => {
                    self.produce_version.get_or_insert(conn.version);
                    if let Some(sender) = conn.sender() {
                        self.routes
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .senders
                            .insert(key, sender);
                    }
                    self.conns.insert(key, conn);
                }
                Err(e) => {
                    tracing::warn!(broker = key.0, %addr, error = %e, "cannot connect to leader")
                }
            }
        }
        {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            routes.leaders = map.partitions.iter().map(|(&p, l)| (p, l.leader)).collect();
        }
        self.cluster = map;
        Ok(())
    }

    fn count_error(&mut self, code: Option<i16>, name: String, retried: bool) {
        let e = self.errors.entry((code, name)).or_insert((0, 0));
        e.0 += 1;
        if retried {
            e.1 += 1;
        }
    }

    fn succeed(&mut self, broker: i32, job: &ProduceJob, acked: Option<Instant>) {
        self.counts.finished_batches += 1;
        let records = u64::from(job.record_count);
        if job.intended < self.measure_from {
            self.counts.warmup_records += records;
            return;
        }
        let sent = job.first_sent.unwrap_or(job.intended);
        self.counts.measured_records += records;
        let done = acked.unwrap_or(sent);
        self.last_measured_done = Some(self.last_measured_done.map_or(done, |d| d.max(done)));
        self.recorder.record(
            broker,
            job.partition,
            acked.map(|a| a.saturating_duration_since(sent)),
            Some(sent.saturating_duration_since(job.intended)),
            records,
            job.records.len() as u64,
        );
    }

    fn fail(&mut self, job: &ProduceJob) {
        self.counts.finished_batches += 1;
        self.counts.failed_records += u64::from(job.record_count);
    }

    fn may_retry(&self, job: &ProduceJob) -> bool {
        !self.closing && job.first_sent.unwrap_or(job.intended).elapsed() < self.settings.timeout
    }

    /// Turns one outcome into a sample, a counted error, or a retry.
    pub fn handle(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answered {
                broker,
                job,
                acked,
                error_code,
                encode,
            } => {
                stats::record(&mut self.encode, encode, 1);
                if error_code == 0 {
                    self.succeed(broker, &job, Some(acked));
                    return;
                }
                let retry = is_leadership_error(error_code) && self.may_retry(&job);
                self.count_error(Some(error_code), error_name(error_code), retry);
                if retry {
                    self.retry.push(job);
                } else {
                    self.fail(&job);
                }
            }
            Outcome::Written {
                broker,
                job,
                encode,
            } => {
                stats::record(&mut self.encode, encode, 1);
                self.succeed(broker, &job, None);
            }
            Outcome::Lost {
                broker,
                mut job,
                error,
            } => {
                let retry = self.may_retry(&job);
                tracing::debug!(broker, %error, retry, "produce request lost");
                let name = if self.closing {
                    Some("NoAnswerByEndOfRun")
                } else if broker >= 0 {
                    Some("ConnectionLost")
                } else if !job.waited_for_leader {
                    // A batch waiting for a new leader bounces here on
                    // every Metadata refresh; it counts once.
                    job.waited_for_leader = true;
                    Some("NoLeaderKnown")
                } else {
                    None
                };
                if let Some(name) = name {
                    self.count_error(None, name.to_string(), retry);
                }
                if retry {
                    self.retry.push(job);
                } else {
                    self.fail(&job);
                }
            }
        }
    }

    /// Waits up to `timeout` for outcomes and handles them, then resends
    /// what waits for a leader if Metadata may be asked again.
    pub fn pump(&mut self, timeout: Duration) {
        match self.outcomes.recv_timeout(timeout) {
            Ok(o) => {
                self.handle(o);
                while let Ok(o) = self.outcomes.try_recv() {
                    self.handle(o);
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        self.resend_due();
    }

    fn resend_due(&mut self) {
        if self.retry.is_empty() || Instant::now() < self.next_refresh {
            return;
        }
        self.next_refresh = Instant::now() + REFRESH_BACKOFF;
        if let Err(e) = self.refresh() {
            tracing::debug!(error = %e, "metadata refresh failed; will retry");
        }
        let dispatcher = self.dispatcher();
        for job in std::mem::take(&mut self.retry) {
            if self.may_retry(&job) {
                dispatcher.dispatch(job);
            } else {
                self.fail(&job);
            }
        }
    }

    /// Requests written but not answered, over all connections.
    pub fn in_flight(&self) -> usize {
        self.conns.values().map(|c| c.in_flight()).sum()
    }

    /// Handles outcomes until `issued` batches have ended or `deadline`.
    pub fn drain(&mut self, issued: u64, deadline: Instant) {
        while self.counts.finished_batches < issued && Instant::now() < deadline {
            self.pump(Duration::from_millis(20));
        }
    }

    /// Closes every connection; whatever is still unanswered fails.
    pub fn close(&mut self) {
        self.closing = true;
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .senders
            .clear();
        for (_, c) in std::mem::take(&mut self.conns) {
            c.close();
        }
        while let Ok(o) = self.outcomes.try_recv() {
            self.handle(o);
        }
        for job in std::mem::take(&mut self.retry) {
            self.fail(&job);
        }
    }

    /// Errors by code, for the report.
    pub fn errors(&self) -> Vec<ErrorCount> {
        self.errors
            .iter()
            .map(|((code, name), (count, retried))| ErrorCount {
                code: *code,
                name: name.clone(),
                count: *count,
                retried: *retried,
            })
            .collect()
    }
}
