//! A shard that ends takes the broker down with it, promptly and cleanly.
//!
//! Each shard executor thread holds an [`ExitGuard`] in a thread-local ([`arm`]) that reports how
//! its shard ended: with the shard's outcome ([`finish`]), or as a death when the thread exits
//! without one (a panic unwinds out of glommio's executor without dropping the shard's future,
//! but thread-local destructors still run). The main thread
//! waits for those reports in whatever order they come ([`wait_for_shards`]), not by joining the
//! threads in order, where a later shard's death goes unseen while an earlier shard still runs.
//! The first failure triggers shutdown for everyone; a shard that died also counts itself as
//! drained, so the others do not wait for it before closing their logs; and if the survivors have
//! not stopped within [`STOP_BOUND`], the broker exits anyway.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_shards::runtime::Shutdown;
use tracing::error;

/// How long the other shards get to stop once one has failed.
pub const STOP_BOUND: Duration = Duration::from_secs(30);
/// Fault injection for tests: the last shard panics this many ms after it started.
pub const PANIC_SHARD_ENV: &str = "CHRONIK_FAULT_PANIC_SHARD_AFTER_MS";

/// How one shard ended.
pub type Exit = (usize, Result<(), String>);

thread_local! {
    /// This shard thread's guard, until its shard's outcome is reported.
    static ARMED: RefCell<Option<ExitGuard>> = const { RefCell::new(None) };
}

/// Makes `guard` report this thread's end (call on the shard's thread, before it runs).
pub fn arm(guard: ExitGuard) {
    ARMED.with(|armed| *armed.borrow_mut() = Some(guard));
}

/// Reports the outcome of this thread's shard through its armed guard.
pub fn finish(outcome: Result<(), String>) {
    if let Some(guard) = ARMED.with(|armed| armed.borrow_mut().take()) {
        guard.finish(outcome);
    }
}

/// Reports its shard's end exactly once: with the outcome of the shard's future, or as a death
/// if it is dropped first (the executor thread unwinding from a panic).
pub struct ExitGuard {
    shard: usize,
    exits: Sender<Exit>,
    shutdown: Shutdown,
    drained: Arc<AtomicUsize>,
    reported: bool,
}

impl ExitGuard {
    pub fn new(
        shard: usize,
        exits: Sender<Exit>,
        shutdown: Shutdown,
        drained: Arc<AtomicUsize>,
    ) -> Self {
        ExitGuard {
            shard,
            exits,
            shutdown,
            drained,
            reported: false,
        }
    }

    /// The shard's future returned.
    pub fn finish(mut self, outcome: Result<(), String>) {
        self.reported = true;
        let _ = self.exits.send((self.shard, outcome));
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.reported {
            return;
        }
        // The shard died without returning: stop everyone, and let the others close their logs
        // without waiting for it to drain.
        self.shutdown.trigger();
        self.drained.fetch_add(1, Ordering::SeqCst);
        let _ = self.exits.send((
            self.shard,
            Err(format!("shard {} died (its executor panicked)", self.shard)),
        ));
    }
}

/// How the shards ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    /// The last failure, if any (each is logged).
    pub result: Result<(), String>,
    /// Every shard reported its end (its thread can be joined without waiting).
    pub all_stopped: bool,
}

/// Waits until every one of `shards` shards reported its end; gives up `STOP_BOUND` after the
/// first failure if some shard is still running.
pub fn wait_for_shards(exits: Receiver<Exit>, shards: usize, shutdown: &Shutdown) -> Ended {
    let mut result = Ok(());
    let mut running = shards;
    let mut give_up_at: Option<Instant> = None;
    while running > 0 {
        let exit = match give_up_at {
            None => exits.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => exits.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match exit {
            Ok((_, Ok(()))) => running -= 1,
            Ok((shard, Err(e))) => {
                running -= 1;
                error!(shard, "{e}");
                shutdown.trigger();
                give_up_at.get_or_insert_with(|| Instant::now() + STOP_BOUND);
                result = Err(e);
            }
            Err(RecvTimeoutError::Timeout) => {
                let e = format!(
                    "{running} shard(s) did not stop within {STOP_BOUND:?} of a shard failure"
                );
                error!("{e}");
                return Ended {
                    result: Err(e),
                    all_stopped: false,
                };
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Every guard is gone without reporting: cannot happen (a guard reports when
                // dropped), but never wait forever.
                shutdown.trigger();
                return Ended {
                    result: Err(format!("{running} shard(s) ended without a report")),
                    all_stopped: false,
                };
            }
        }
    }
    Ended {
        result,
        all_stopped: true,
    }
}

/// Fault injection: with `CHRONIK_FAULT_PANIC_SHARD_AFTER_MS=N`, the last shard's executor
/// panics N ms after it started (a task panicking, as a shard did when logging failed).
pub fn inject_panic(shard: usize, shards: usize) {
    let Some(ms) = std::env::var(PANIC_SHARD_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if shard + 1 != shards {
        return;
    }
    glommio::spawn_local(async move {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        panic!("fault injection: {PANIC_SHARD_ENV}={ms} on shard {shard}");
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(shard: usize, exits: &Sender<Exit>, shutdown: &Shutdown) -> ExitGuard {
        ExitGuard::new(
            shard,
            exits.clone(),
            shutdown.clone(),
            Arc::new(AtomicUsize::new(0)),
        )
    }

    #[test]
    fn a_later_shard_dying_is_seen_while_an_earlier_one_runs() {
        let (exits, exited) = std::sync::mpsc::channel();
        let shutdown = Shutdown::new();
        let first = guard(0, &exits, &shutdown);
        let second = guard(1, &exits, &shutdown);
        drop(exits);
        // Shard 1 dies (dropped unreported); shard 0 only stops once shutdown is triggered.
        let stopper = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                while !shutdown.is_triggered() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                first.finish(Ok(()));
            })
        };
        drop(second);
        let ended = wait_for_shards(exited, 2, &shutdown);
        stopper.join().unwrap();
        assert!(ended.all_stopped);
        assert!(ended.result.unwrap_err().contains("shard 1 died"));
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn a_thread_that_panics_reports_its_death() {
        let (exits, exited) = std::sync::mpsc::channel();
        let shutdown = Shutdown::new();
        let armed = guard(3, &exits, &shutdown);
        drop(exits);
        let thread = std::thread::spawn(move || {
            arm(armed);
            panic!("a shard task panics");
        });
        assert!(thread.join().is_err());
        let ended = wait_for_shards(exited, 1, &shutdown);
        assert!(ended.result.unwrap_err().contains("shard 3 died"));
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn clean_exits_are_ok() {
        let (exits, exited) = std::sync::mpsc::channel();
        let shutdown = Shutdown::new();
        for shard in 0..3 {
            guard(shard, &exits, &shutdown).finish(Ok(()));
        }
        assert_eq!(
            wait_for_shards(exited, 3, &shutdown),
            Ended {
                result: Ok(()),
                all_stopped: true
            }
        );
        assert!(!shutdown.is_triggered());
    }

    #[test]
    fn a_shard_error_stops_the_others() {
        let (exits, exited) = std::sync::mpsc::channel();
        let shutdown = Shutdown::new();
        guard(0, &exits, &shutdown).finish(Err("cannot listen".into()));
        guard(1, &exits, &shutdown).finish(Ok(()));
        assert_eq!(
            wait_for_shards(exited, 2, &shutdown).result,
            Err("cannot listen".into())
        );
        assert!(shutdown.is_triggered());
    }
}
