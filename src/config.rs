//! The broker's start-up configuration: flags over a TOML file over defaults.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;

use crate::cli::StartArgs;
use crate::partitions::cleaner::{self, CleanerSettings};
use crate::server::limits::{self, Limits};

/// `replica.lag.time.max.ms` when not configured (Kafka's default).
pub const DEFAULT_REPLICA_LAG_TIME_MAX_MS: u64 = 30_000;
/// `log.retention.check.interval.ms` when not configured (Kafka's is 5 minutes; segments here are
/// checked more often because the check is cheap: a walk over sealed segments' metadata).
pub const DEFAULT_LOG_RETENTION_CHECK_INTERVAL_MS: u64 = 30_000;

/// Everything `chronik start` needs, resolved and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to.
    pub advertised: (String, u16),
    /// Number of shard executors.
    pub cores: usize,
    pub rpc: Option<SocketAddr>,
    pub peers: Vec<(i32, SocketAddr)>,
    pub control_core: Option<usize>,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `log.retention.check.interval.ms`: how often shards apply retention.
    pub log_retention_check_interval_ms: u64,
    /// `producer.id.expiration.ms`: how long an idle idempotent producer's state is kept.
    pub producer_id_expiration_ms: u64,
    /// Shard executors unpinned (several brokers share the CPUs).
    pub overprovisioned: bool,
    /// `storage_min_free_bytes` as configured; None: the default, which depends on the
    /// filesystem's size (`server::disk_space::threshold`).
    pub storage_min_free_bytes: Option<u64>,
    /// What a client connection may hold.
    pub limits: Limits,
    /// Each shard's log cleaner (`log.cleaner.*`).
    pub cleaner: CleanerSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The `--config` TOML file: the flags' names, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    #[serde(alias = "node_id")]
    node_id: Option<i32>,
    #[serde(alias = "data_dir")]
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertised: Option<String>,
    cores: Option<usize>,
    rpc: Option<String>,
    peers: Option<PeersValue>,
    #[serde(alias = "control_core")]
    control_core: Option<usize>,
    #[serde(alias = "replica_lag_time_max_ms")]
    replica_lag_time_max_ms: Option<u64>,
    #[serde(alias = "log_retention_check_interval_ms")]
    log_retention_check_interval_ms: Option<u64>,
    #[serde(alias = "producer_id_expiration_ms")]
    producer_id_expiration_ms: Option<u64>,
    overprovisioned: Option<bool>,
    #[serde(alias = "storage_min_free_bytes")]
    storage_min_free_bytes: Option<u64>,
    socket_request_max_bytes: Option<usize>,
    queued_max_request_bytes: Option<usize>,
    max_connections: Option<usize>,
    fetch_max_bytes: Option<usize>,
    response_write_timeout_ms: Option<u64>,
    request_read_timeout_ms: Option<u64>,
    connections_max_idle_ms: Option<u64>,
    log_cleaner_enable: Option<bool>,
    log_cleaner_io_max_bytes_per_second: Option<u64>,
    log_cleaner_dedupe_buffer_size: Option<usize>,
    log_cleaner_backoff_ms: Option<u64>,
}

/// `peers` in the file: either "1@h:p,2@h:p" or ["1@h:p", "2@h:p"] (`=` works too).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeersValue {
    One(String),
    Many(Vec<String>),
}

impl BrokerConfig {
    /// Resolves the flags, the file they name (if any), and the defaults.
    /// `available_cpus` is the number of CPUs this process may use.
    pub fn resolve(args: &StartArgs, available_cpus: usize) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };

        let limits = resolve_limits(args, &file)?;
        let cleaner = resolve_cleaner(args, &file)?;
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        if node_id < 0 {
            return Err(invalid("node-id", node_id.to_string(), "must be >= 0"));
        }
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:9092".to_string());
        let listen = resolve_addr("listen", &listen_text)?;
        if listen.port() == 0 {
            // Every shard binds the port itself: they must agree on it.
            return Err(invalid("listen", listen_text, "a fixed port is required"));
        }
        let advertised = match args.advertised.clone().or(file.advertised) {
            Some(text) => split_host_port("advertised", &text)?,
            None => (advertised_host(listen.ip()), listen.port()),
        };
        let cores = args.cores.or(file.cores).unwrap_or(available_cpus).max(1);
        if cores > available_cpus {
            return Err(invalid(
                "cores",
                cores.to_string(),
                &format!("only {available_cpus} CPUs are available"),
            ));
        }
        let rpc = match args.rpc.clone().or(file.rpc) {
            Some(text) => Some(resolve_addr("rpc", &text)?),
            None => None,
        };
        let peers_list: Vec<String> = match (&args.peers, file.peers) {
            (Some(text), _) => split_list(text),
            (None, Some(PeersValue::One(text))) => split_list(&text),
            (None, Some(PeersValue::Many(list))) => list,
            (None, None) => Vec::new(),
        };
        let peers = peers_list
            .iter()
            .map(|peer| parse_peer(peer))
            .collect::<Result<Vec<_>, _>>()?;
        let control_core = args.control_core.or(file.control_core);
        let replica_lag_time_max_ms = positive_ms(
            "replica-lag-time-max-ms",
            args.replica_lag_time_max_ms
                .or(file.replica_lag_time_max_ms),
            DEFAULT_REPLICA_LAG_TIME_MAX_MS,
        )?;
        let log_retention_check_interval_ms = positive_ms(
            "log-retention-check-interval-ms",
            args.log_retention_check_interval_ms
                .or(file.log_retention_check_interval_ms),
            DEFAULT_LOG_RETENTION_CHECK_INTERVAL_MS,
        )?;
        let producer_id_expiration_ms = positive_ms(
            "producer-id-expiration-ms",
            args.producer_id_expiration_ms
                .or(file.producer_id_expiration_ms),
            chronik_shards::log::DEFAULT_PRODUCER_ID_EXPIRATION_MS as u64,
        )?;
        Ok(BrokerConfig {
            node_id,
            data_dir,
            listen,
            advertised,
            cores,
            rpc,
            peers,
            control_core,
            replica_lag_time_max_ms,
            log_retention_check_interval_ms,
            producer_id_expiration_ms,
            overprovisioned: args.overprovisioned || file.overprovisioned.unwrap_or(false),
            storage_min_free_bytes: args.storage_min_free_bytes.or(file.storage_min_free_bytes),
            limits,
            cleaner,
        })
    }
}

/// Smallest `log-cleaner-dedupe-buffer-size`: a key map of a few thousand keys (Kafka refuses
/// less than 1 MiB per cleaner thread too).
const MIN_DEDUPE_BUFFER_BYTES: usize = 1 << 20;

/// The cleaner settings: flags over the file over the defaults of `partitions::cleaner`.
fn resolve_cleaner(args: &StartArgs, file: &FileConfig) -> Result<CleanerSettings, ConfigError> {
    let io_max_bytes_per_second = args
        .log_cleaner_io_max_bytes_per_second
        .or(file.log_cleaner_io_max_bytes_per_second)
        .unwrap_or(cleaner::DEFAULT_IO_MAX_BYTES_PER_SECOND);
    if io_max_bytes_per_second == 0 {
        return Err(invalid(
            "log-cleaner-io-max-bytes-per-second",
            "0".into(),
            "must be > 0",
        ));
    }
    let dedupe_buffer_bytes = args
        .log_cleaner_dedupe_buffer_size
        .or(file.log_cleaner_dedupe_buffer_size)
        .unwrap_or(cleaner::DEFAULT_DEDUPE_BUFFER_BYTES);
    if dedupe_buffer_bytes < MIN_DEDUPE_BUFFER_BYTES {
        return Err(invalid(
            "log-cleaner-dedupe-buffer-size",
            dedupe_buffer_bytes.to_string(),
            &format!("must be at least {MIN_DEDUPE_BUFFER_BYTES}"),
        ));
    }
    let backoff_ms = positive_ms(
        "log-cleaner-backoff-ms",
        args.log_cleaner_backoff_ms.or(file.log_cleaner_backoff_ms),
        cleaner::DEFAULT_BACKOFF_MS,
    )?;
    Ok(CleanerSettings {
        enabled: args
            .log_cleaner_enable
            .or(file.log_cleaner_enable)
            .unwrap_or(true),
        io_max_bytes_per_second,
        dedupe_buffer_bytes,
        backoff: std::time::Duration::from_millis(backoff_ms),
    })
}

/// The connection limits: flags over the file over the defaults of `server::limits`.
fn resolve_limits(args: &StartArgs, file: &FileConfig) -> Result<Limits, ConfigError> {
    let positive =
        |key: &'static str, given: Option<usize>, default: usize| match given.unwrap_or(default) {
            0 => Err(invalid(key, "0".into(), "must be > 0")),
            n => Ok(n),
        };
    let ms = |key, flag: Option<u64>, file: Option<u64>, default| {
        positive_ms(key, flag.or(file), default).map(std::time::Duration::from_millis)
    };
    let socket_request_max_bytes = positive(
        "socket-request-max-bytes",
        args.socket_request_max_bytes
            .or(file.socket_request_max_bytes),
        limits::DEFAULT_SOCKET_REQUEST_MAX_BYTES,
    )?;
    if socket_request_max_bytes > i32::MAX as usize {
        return Err(invalid(
            "socket-request-max-bytes",
            socket_request_max_bytes.to_string(),
            "must fit a frame's 31-bit length",
        ));
    }
    Ok(Limits {
        socket_request_max_bytes,
        queued_max_request_bytes: positive(
            "queued-max-request-bytes",
            args.queued_max_request_bytes
                .or(file.queued_max_request_bytes),
            limits::DEFAULT_QUEUED_MAX_REQUEST_BYTES,
        )?,
        max_connections: positive(
            "max-connections",
            args.max_connections.or(file.max_connections),
            limits::DEFAULT_MAX_CONNECTIONS,
        )?,
        fetch_max_bytes: positive(
            "fetch-max-bytes",
            args.fetch_max_bytes.or(file.fetch_max_bytes),
            limits::DEFAULT_FETCH_MAX_BYTES,
        )?,
        response_write_timeout: ms(
            "response-write-timeout-ms",
            args.response_write_timeout_ms,
            file.response_write_timeout_ms,
            limits::DEFAULT_RESPONSE_WRITE_TIMEOUT_MS,
        )?,
        request_read_timeout: ms(
            "request-read-timeout-ms",
            args.request_read_timeout_ms,
            file.request_read_timeout_ms,
            limits::DEFAULT_REQUEST_READ_TIMEOUT_MS,
        )?,
        connections_max_idle: ms(
            "connections-max-idle-ms",
            args.connections_max_idle_ms,
            file.connections_max_idle_ms,
            limits::DEFAULT_CONNECTIONS_MAX_IDLE_MS,
        )?,
    })
}

/// A duration setting in milliseconds (flag, else file, else `default`): 0 is refused.
fn positive_ms(key: &'static str, given: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match given.unwrap_or(default) {
        0 => Err(invalid(key, "0".into(), "must be > 0")),
        ms => Ok(ms),
    }
}

fn invalid(key: &'static str, value: String, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value,
        reason: reason.to_string(),
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn resolve_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.to_socket_addrs()
        .map_err(|e| invalid(key, text.to_string(), &e.to_string()))?
        .next()
        .ok_or_else(|| invalid(key, text.to_string(), "resolves to no address"))
}

fn split_host_port(key: &'static str, text: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, text.to_string(), "expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(key, text.to_string(), "bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid(key, text.to_string(), "empty host"));
    }
    Ok((host.to_string(), port))
}

/// One peer: `ID@HOST:PORT` (the documented form) or `ID=HOST:PORT`.
fn parse_peer(text: &str) -> Result<(i32, SocketAddr), ConfigError> {
    let (id, addr) = text
        .split_once(['@', '='])
        .ok_or_else(|| invalid("peers", text.to_string(), "expected ID@HOST:PORT"))?;
    let id: i32 = id
        .trim()
        .parse()
        .map_err(|_| invalid("peers", text.to_string(), "bad node id"))?;
    Ok((id, resolve_addr("peers", addr.trim())?))
}

/// The host to advertise when only a listen address is given: the listen IP,
/// or this machine's host name when listening on every interface.
fn advertised_host(ip: IpAddr) -> String {
    if !ip.is_unspecified() {
        return ip.to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..len]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "localhost".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults() {
        let config = BrokerConfig::resolve(&StartArgs::default(), 4).unwrap();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(config.advertised, ("127.0.0.1".to_string(), 9092));
        assert_eq!(config.cores, 4);
        assert!(config.peers.is_empty() && config.rpc.is_none());
        assert_eq!(config.replica_lag_time_max_ms, 30_000);
        assert_eq!(config.log_retention_check_interval_ms, 30_000);
        assert!(!config.overprovisioned);
        assert_eq!(config.storage_min_free_bytes, None);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.cleaner, CleanerSettings::default());
    }

    #[test]
    fn cleaner_settings_from_flags_and_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "log-cleaner-enable = false\nlog-cleaner-backoff-ms = 200\nlog-cleaner-dedupe-buffer-size = 2097152\nlog-cleaner-io-max-bytes-per-second = 1000000"
        )
        .unwrap();
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            log_cleaner_backoff_ms: Some(100),
            ..StartArgs::default()
        };
        let cleaner = BrokerConfig::resolve(&args, 2).unwrap().cleaner;
        assert!(!cleaner.enabled);
        assert_eq!(cleaner.backoff, std::time::Duration::from_millis(100));
        assert_eq!(cleaner.dedupe_buffer_bytes, 2 << 20);
        assert_eq!(cleaner.io_max_bytes_per_second, 1_000_000);
        for bad in [
            StartArgs {
                log_cleaner_backoff_ms: Some(0),
                ..StartArgs::default()
            },
            StartArgs {
                log_cleaner_io_max_bytes_per_second: Some(0),
                ..StartArgs::default()
            },
            StartArgs {
                log_cleaner_dedupe_buffer_size: Some(1000),
                ..StartArgs::default()
            },
        ] {
            assert!(BrokerConfig::resolve(&bad, 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_from_flags_and_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "max-connections = 50\nfetch-max-bytes = 1048576\nresponse-write-timeout-ms = 2000"
        )
        .unwrap();
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            max_connections: Some(7),
            socket_request_max_bytes: Some(1 << 20),
            ..StartArgs::default()
        };
        let limits = BrokerConfig::resolve(&args, 2).unwrap().limits;
        assert_eq!(limits.max_connections, 7);
        assert_eq!(limits.fetch_max_bytes, 1 << 20);
        assert_eq!(limits.socket_request_max_bytes, 1 << 20);
        assert_eq!(
            limits.response_write_timeout,
            std::time::Duration::from_secs(2)
        );
        for bad in [
            StartArgs {
                max_connections: Some(0),
                ..StartArgs::default()
            },
            StartArgs {
                socket_request_max_bytes: Some(1 << 31),
                ..StartArgs::default()
            },
        ] {
            assert!(BrokerConfig::resolve(&bad, 2).is_err());
        }
    }

    #[test]
    fn flags_win_over_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "node-id = 3\ndata-dir = \"/tmp/x\"\nlisten = \"127.0.0.1:9500\"\ncores = 1\npeers = [\"1@127.0.0.1:9601\", \"2=127.0.0.1:9602\"]\nreplica-lag-time-max-ms = 2000\nlog-retention-check-interval-ms = 250\noverprovisioned = true"
        )
        .unwrap();
        let args = StartArgs {
            node_id: Some(7),
            config: Some(file.path().to_path_buf()),
            advertised: Some("broker.example:19092".into()),
            ..StartArgs::default()
        };
        let config = BrokerConfig::resolve(&args, 2).unwrap();
        assert_eq!(config.node_id, 7);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.listen.port(), 9500);
        assert_eq!(config.advertised, ("broker.example".to_string(), 19092));
        assert_eq!(config.cores, 1);
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.peers[1].0, 2);
        assert_eq!(config.replica_lag_time_max_ms, 2000);
        assert!(config.overprovisioned);
        assert_eq!(config.log_retention_check_interval_ms, 250);
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            replica_lag_time_max_ms: Some(500),
            ..StartArgs::default()
        };
        let config = BrokerConfig::resolve(&args, 2).unwrap();
        assert_eq!(config.replica_lag_time_max_ms, 500);
    }

    #[test]
    fn storage_min_free_bytes_from_flag_or_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "storage-min-free-bytes = 5000").unwrap();
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            ..StartArgs::default()
        };
        let config = BrokerConfig::resolve(&args, 2).unwrap();
        assert_eq!(config.storage_min_free_bytes, Some(5000));
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            storage_min_free_bytes: Some(0),
            ..StartArgs::default()
        };
        let config = BrokerConfig::resolve(&args, 2).unwrap();
        assert_eq!(config.storage_min_free_bytes, Some(0));
    }

    #[test]
    fn peers_take_id_at_host_port() {
        let args = StartArgs {
            peers: Some("1@127.0.0.1:9601, 2@127.0.0.1:9602,3=127.0.0.1:9603".into()),
            ..StartArgs::default()
        };
        let config = BrokerConfig::resolve(&args, 2).unwrap();
        let ids: Vec<i32> = config.peers.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(config.peers[1].1, "127.0.0.1:9602".parse().unwrap());
        let args = StartArgs {
            peers: Some("1:127.0.0.1:9601".into()),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let args = StartArgs {
            cores: Some(9),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
        let args = StartArgs {
            listen: Some("nonsense".into()),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
        let args = StartArgs {
            listen: Some("127.0.0.1:0".into()),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
        let args = StartArgs {
            peers: Some("x=1.2.3.4:5".into()),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
        let args = StartArgs {
            replica_lag_time_max_ms: Some(0),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "unknown-key = 1").unwrap();
        let args = StartArgs {
            config: Some(file.path().to_path_buf()),
            ..StartArgs::default()
        };
        assert!(BrokerConfig::resolve(&args, 2).is_err());
    }
}
