//! Carries work to the shard that owns it and the answer back.
//!
//! Work is a `Send` closure: it crosses to the owning shard over glommio's
//! channel mesh and runs there against that shard's context `C` (which is not
//! `Send`: logs, caches). The closure's synchronous part runs inline in the
//! owner's receive loop, in the order the closures were sent from one shard,
//! so work that must keep its order (appends from one connection) does; the
//! future it returns runs as its own task and its output travels back through
//! a [`oneshot`](super::oneshot) channel. Work for the local shard skips the
//! channel but keeps the same semantics.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};

use super::oneshot;

/// A future local to one shard.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// What travels over the mesh.
pub type Job<C> = Box<dyn FnOnce(&Rc<C>) -> LocalFuture<()> + Send>;

/// The mesh builder every shard joins at start.
pub type JobMeshBuilder<C> = MeshBuilder<Job<C>, Full>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MeshError {
    #[error("shard {0} does not exist")]
    NoSuchShard(usize),
    #[error("shard {0} is not accepting work (shutting down)")]
    Closed(usize),
    #[error("shard {0} abandoned the work")]
    Canceled(usize),
    #[error("could not join the shard mesh")]
    Join,
}

/// One shard's end of the mesh.
pub struct ShardMesh<C: 'static> {
    shard: usize,
    shards: usize,
    senders: Option<Senders<Job<C>>>,
    receivers: RefCell<Option<Receivers<Job<C>>>>,
    context: RefCell<Weak<C>>,
}

/// Creates the builder that every one of `shards` executors must join.
/// `capacity` bounds each directed channel (backpressure on a busy owner).
pub fn builder<C: 'static>(shards: usize, capacity: usize) -> Option<JobMeshBuilder<C>> {
    (shards > 1).then(|| MeshBuilder::full(shards, capacity))
}

impl<C: 'static> ShardMesh<C> {
    /// Joins the mesh (waits for every shard to join). With a single shard
    /// there is no mesh and `builder` is `None`.
    pub async fn join(
        builder: Option<JobMeshBuilder<C>>,
        shard: usize,
        shards: usize,
    ) -> Result<Self, MeshError> {
        let (senders, receivers) = match builder {
            Some(builder) => {
                let (senders, receivers) = builder.join().await.map_err(|_| MeshError::Join)?;
                (Some(senders), Some(receivers))
            }
            None => (None, None),
        };
        Ok(ShardMesh {
            shard,
            shards,
            senders,
            receivers: RefCell::new(receivers),
            context: RefCell::new(Weak::new()),
        })
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Starts running work sent by the other shards against `context`.
    /// Call once, when the shard's context exists.
    pub fn serve(&self, context: &Rc<C>) {
        *self.context.borrow_mut() = Rc::downgrade(context);
        let Some(mut receivers) = self.receivers.borrow_mut().take() else {
            return;
        };
        for (_, receiver) in receivers.streams() {
            let context = Rc::downgrade(context);
            glommio::spawn_local(async move {
                while let Some(job) = receiver.recv().await {
                    let Some(context) = context.upgrade() else {
                        break;
                    };
                    glommio::spawn_local(job(&context)).detach();
                }
            })
            .detach();
        }
    }

    /// Sends `work` to `shard`; resolves once it is queued there (in order
    /// with earlier sends from this shard) and returns the pending answer.
    pub async fn send<T, F>(&self, shard: usize, work: F) -> Result<Reply<T>, MeshError>
    where
        T: Send + 'static,
        F: FnOnce(&Rc<C>) -> LocalFuture<T> + Send + 'static,
    {
        if shard >= self.shards {
            return Err(MeshError::NoSuchShard(shard));
        }
        let (tx, rx) = oneshot::channel();
        let job: Job<C> = Box::new(move |context: &Rc<C>| {
            let answer = work(context);
            Box::pin(async move { tx.send(answer.await) })
        });
        if shard == self.shard {
            let context = self
                .context
                .borrow()
                .upgrade()
                .ok_or(MeshError::Closed(shard))?;
            glommio::spawn_local(job(&context)).detach();
        } else {
            let senders = self.senders.as_ref().ok_or(MeshError::NoSuchShard(shard))?;
            if senders.send_to(shard, job).await.is_err() {
                return Err(MeshError::Closed(shard));
            }
        }
        Ok(Reply { rx, shard })
    }

    /// `send` and wait for the answer.
    pub async fn call<T, F>(&self, shard: usize, work: F) -> Result<T, MeshError>
    where
        T: Send + 'static,
        F: FnOnce(&Rc<C>) -> LocalFuture<T> + Send + 'static,
    {
        self.send(shard, work).await?.await
    }

    /// Stops sending to the other shards (their receive loops end).
    pub fn close(&self) {
        if let Some(senders) = &self.senders {
            senders.close();
        }
    }
}

/// The answer to work sent with [`ShardMesh::send`].
pub struct Reply<T> {
    rx: oneshot::Receiver<T>,
    shard: usize,
}

impl<T> Future for Reply<T> {
    type Output = Result<T, MeshError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shard = self.shard;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|answer| answer.map_err(|_| MeshError::Canceled(shard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    struct Shard {
        id: usize,
        seen: RefCell<Vec<u32>>,
    }

    #[test]
    fn work_runs_on_the_owner_in_order_and_answers_come_back() {
        let shards = 2;
        let builder = builder::<Shard>(shards, 64);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..shards)
            .map(|id| {
                let builder = builder.clone();
                let done = done.clone();
                LocalExecutorBuilder::default()
                    .io_memory(1 << 20)
                    .spawn(move || async move {
                        let mesh = ShardMesh::join(builder, id, shards).await.unwrap();
                        let shard = Rc::new(Shard {
                            id,
                            seen: RefCell::new(Vec::new()),
                        });
                        mesh.serve(&shard);
                        let mut replies = Vec::new();
                        for n in 0..100u32 {
                            let target = (id + 1) % shards;
                            let reply = mesh
                                .send(target, move |owner: &Rc<Shard>| {
                                    owner.seen.borrow_mut().push(n);
                                    let owner_id = owner.id;
                                    Box::pin(async move { (owner_id, n) }) as LocalFuture<_>
                                })
                                .await
                                .unwrap();
                            replies.push(reply);
                        }
                        for (n, reply) in replies.into_iter().enumerate() {
                            assert_eq!(reply.await.unwrap(), ((id + 1) % shards, n as u32));
                        }
                        let local = mesh
                            .call(id, |owner: &Rc<Shard>| {
                                let owner_id = owner.id;
                                Box::pin(async move { owner_id }) as LocalFuture<_>
                            })
                            .await
                            .unwrap();
                        assert_eq!(local, id);
                        // Wait until the peer's 100 jobs arrived here, in order.
                        while shard.seen.borrow().len() < 100 {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                        assert_eq!(*shard.seen.borrow(), (0..100).collect::<Vec<_>>());
                        // Keep serving until every shard has its answers.
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        while done.load(std::sync::atomic::Ordering::SeqCst) < shards {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    })
                    .unwrap()
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }
}
