//! Writes the control node cannot skip (raft entries, the hard state) are retried until they
//! succeed, instead of stopping the control plane: a full disk is a condition that ends (the
//! storage's reserve is given back at once, and space is freed by deleting topics), and a node
//! that stopped for good would leave the broker up but unable to change any metadata.
//!
//! While retrying, the node handles nothing else: requests that arrive are kept in order for
//! later, except a shutdown, which ends the retry (and the node).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_channel::Sender;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Request;

/// First wait between attempts; doubled after each failure up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A retry that keeps failing is logged again this often.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Why a retried write gave up: a shutdown was asked for meanwhile.
pub struct Interrupted {
    pub error: String,
    pub shutdown: Sender<()>,
}

/// Runs `op` until it succeeds. Between attempts waits (50 ms doubling to 5 s) on `requests`,
/// moving what arrives to `deferred`; a shutdown request ends the retry.
pub fn retry<T, E: std::fmt::Display>(
    what: &str,
    requests: &Receiver<Request>,
    deferred: &mut VecDeque<Request>,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, Interrupted> {
    let mut delay = FIRST_DELAY;
    let mut warned: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        let error = match op() {
            Ok(done) => {
                if failures > 0 {
                    tracing::info!(failures, "persisting {what} succeeded again");
                }
                return Ok(done);
            }
            Err(e) => e.to_string(),
        };
        failures += 1;
        if warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
            tracing::warn!(failures, "persisting {what} failed, retrying: {error}");
            warned = Some(Instant::now());
        }
        let until = Instant::now() + delay;
        loop {
            match requests.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Request::Shutdown { reply }) => {
                    return Err(Interrupted {
                        error: format!("persisting {what}: {error}"),
                        shutdown: reply,
                    })
                }
                Ok(other) => deferred.push_back(other),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    break;
                }
            }
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_until_the_write_succeeds_keeping_what_arrives() {
        let (sender, requests) = crossbeam_channel::unbounded();
        let (reply, _) = async_channel::bounded::<()>(1);
        let mut deferred = VecDeque::new();
        let mut attempts = 0;
        let done = retry("test entries", &requests, &mut deferred, || {
            attempts += 1;
            if attempts == 2 {
                // Something arrives while the write fails.
                sender
                    .send(Request::Rpc {
                        from: 2,
                        rpc: Box::new(crate::control::forward::Rpc::Answer {
                            id: 1,
                            result: crate::control::forward::ClientResult::Unit(Ok(())),
                        }),
                    })
                    .unwrap();
            }
            if attempts < 3 {
                Err("No space left on device")
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(done.ok(), Some(3));
        assert_eq!(deferred.len(), 1);
        drop(reply);
    }

    #[test]
    fn a_shutdown_ends_the_retry() {
        let (sender, requests) = crossbeam_channel::unbounded();
        let (reply, _answer) = async_channel::bounded(1);
        sender.send(Request::Shutdown { reply }).unwrap();
        let mut deferred = VecDeque::new();
        let stopped = retry("test entries", &requests, &mut deferred, || {
            Err::<(), _>("No space left on device")
        });
        let interrupted = stopped.err().unwrap();
        assert!(interrupted.error.contains("No space left"));
    }
}
