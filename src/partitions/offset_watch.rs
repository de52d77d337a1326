//! An offset that only grows, which tasks on the same shard can wait on:
//! a partition's high watermark (fetch long-polls and acks=all wait on it).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Debug)]
pub struct OffsetWatch {
    value: Cell<i64>,
    closed: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl OffsetWatch {
    pub fn new(value: i64) -> Self {
        OffsetWatch {
            value: Cell::new(value),
            closed: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }
    }

    pub fn get(&self) -> i64 {
        self.value.get()
    }

    /// Moves the offset forward (never back) and wakes the waiters.
    pub fn advance(&self, value: i64) {
        if value > self.value.get() {
            self.value.set(value);
            self.wake_all();
        }
    }

    /// Moves the offset back to `value` if it is above it (a follower cut its log below what it
    /// had been told was replicated). Waiters keep waiting for their own targets.
    pub fn lower_to(&self, value: i64) {
        if value < self.value.get() {
            self.value.set(value);
        }
    }

    /// Ends every wait, now and later (the partition went away).
    pub fn close(&self) {
        self.closed.set(true);
        self.wake_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    /// Registers the current task to be woken on the next change.
    pub fn register(&self, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// Resolves once the offset is at least `target` (true) or the watch is
    /// closed (false).
    pub async fn wait_at_least(&self, target: i64) -> bool {
        poll_fn(|cx| {
            if self.value.get() >= target {
                Poll::Ready(true)
            } else if self.closed.get() {
                Poll::Ready(false)
            } else {
                self.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn waiters_wake_on_advance_and_close() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async {
                let watch = Rc::new(OffsetWatch::new(0));
                let waiter = {
                    let watch = watch.clone();
                    glommio::spawn_local(async move { watch.wait_at_least(10).await })
                };
                watch.advance(5);
                watch.advance(3);
                assert_eq!(watch.get(), 5);
                watch.lower_to(7);
                assert_eq!(watch.get(), 5);
                watch.lower_to(4);
                assert_eq!(watch.get(), 4);
                watch.advance(5);
                glommio::yield_if_needed().await;
                watch.advance(10);
                assert!(waiter.await);
                let closed = {
                    let watch = watch.clone();
                    glommio::spawn_local(async move { watch.wait_at_least(100).await })
                };
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                watch.close();
                assert!(!closed.await);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
