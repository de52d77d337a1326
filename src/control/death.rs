//! The control thread's death, told to whoever watches for it.
//!
//! A broker whose control plane is gone keeps serving from a metadata image that no longer moves:
//! it would go on leading partitions the controller has moved elsewhere. So a panic on the control
//! thread (raft-rs asserts on what it considers impossible input) is reported here, and the broker
//! stops (`server::run` watches), rather than limping on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

type Watcher = Box<dyn FnOnce(&str) + Send>;

enum State {
    Alive(Vec<Watcher>),
    Dead(String),
}

/// Whether the control thread died, and who to tell when it does.
pub struct DeathWatch {
    state: Mutex<State>,
}

impl Default for DeathWatch {
    fn default() -> Self {
        DeathWatch {
            state: Mutex::new(State::Alive(Vec::new())),
        }
    }
}

impl DeathWatch {
    /// Calls `watcher` with the cause once the thread dies (at once if it has died already).
    pub fn watch(&self, watcher: impl FnOnce(&str) + Send + 'static) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Alive(watchers) => watchers.push(Box::new(watcher)),
            State::Dead(why) => {
                let why = why.clone();
                drop(state);
                watcher(&why);
            }
        }
    }

    /// Runs the thread's `body`; a panic out of it is reported to the watchers.
    pub fn guard(&self, body: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            self.died(why);
        }
    }

    fn died(&self, why: String) {
        tracing::error!("the control thread died: {why}");
        let watchers = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match std::mem::replace(&mut *state, State::Dead(why.clone())) {
                State::Alive(watchers) => watchers,
                State::Dead(_) => Vec::new(),
            }
        };
        for watcher in watchers {
            watcher(&why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_panic_is_told_to_watchers_before_and_after_it() {
        let watch = DeathWatch::default();
        let told = Arc::new(AtomicUsize::new(0));
        let early = told.clone();
        watch.watch(move |why| {
            assert!(why.contains("boom"));
            early.fetch_add(1, Ordering::SeqCst);
        });
        watch.guard(|| {});
        assert_eq!(told.load(Ordering::SeqCst), 0, "a clean end is no death");
        watch.guard(|| panic!("boom"));
        assert_eq!(told.load(Ordering::SeqCst), 1);
        let late = told.clone();
        watch.watch(move |_| {
            late.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(told.load(Ordering::SeqCst), 2);
    }
}
