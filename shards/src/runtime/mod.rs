//! The thread-per-core runtime: one pinned glommio executor per shard, the
//! deterministic placement of partitions on shards, the mesh that carries
//! work to the shard that owns it, and the process-wide shutdown signal.
//!
//! Nothing here knows about Kafka: the broker hands closures to the mesh and
//! they run on the owning shard against that shard's own state.

pub mod executors;
pub mod io_polling;
pub mod mesh;
pub mod oneshot;
pub mod placement;
pub mod shutdown;

pub use executors::{spawn_shards, ShardSpec};
pub use mesh::{MeshError, Reply, ShardMesh};
pub use placement::{available_cpus, owner_shard};
pub use shutdown::Shutdown;
