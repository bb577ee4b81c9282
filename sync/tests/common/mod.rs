//! Fixtures for the integration tests and the benchmark: a real `redis-server` on a free port and
//! the service in-process (or the real binary), with a tonic client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tokio::sync::oneshot;
use tollgate_sync::{Limits, RedisConfig, Stats, Store};
use tonic::transport::Channel;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of our own: no persistence, killed on drop.
pub struct Redis {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or returns `None` (printing why) when `redis-server` is not installed.
    pub fn start(extra: &[&str]) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed (scripts/setup installs it)");
            return None;
        }
        let mut redis = Redis {
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The running server's process id (for the benchmark's CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it (again) on the same port; empty, as it keeps nothing on disk.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Whether something on the port answers PING (+PONG, or -NOAUTH when a password is set).
    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The service, in-process on a free port, stopped on drop.
pub struct Service {
    pub addr: SocketAddr,
    pub store: Store,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
}

impl Service {
    pub async fn start(redis_url: &str, password: Option<&str>, timeout: Duration) -> Service {
        let config = RedisConfig::new(redis_url, password, timeout).unwrap();
        let store = Store::new(&config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = Limits {
            timeout,
            per_descriptor: Duration::from_micros(100),
            max_descriptors: 10_000,
        };
        tokio::spawn(tollgate_sync::serve(
            listener,
            store.clone(),
            limits,
            Arc::clone(&stats),
            async {
                let _ = stopped.await;
            },
        ));
        Service {
            addr,
            store,
            stats,
            stop: Some(stop),
        }
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        client(self.addr).await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn client(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RateLimitServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The real binary, stopped (SIGTERM) on drop.
pub struct Binary {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Binary {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-sync"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TOLLGATE_REDIS_PASSWORD")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Binary { addr, child }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A descriptor `entries` limited to `rate` per `unit`, with an optional own `hits_addend`.
pub fn desc(
    entries: &[(&str, &str)],
    rate: u32,
    unit: RateLimitUnit,
    hits: Option<u64>,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        limit: Some(RateLimitOverride {
            requests_per_unit: rate,
            unit: unit as i32,
        }),
        hits_addend: hits.map(|value| UInt64Value { value }),
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

pub async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .should_rate_limit(request(domain, descriptors))
        .await
        .map(|r| r.into_inner())
}

/// A unique domain per test, so tests sharing nothing cannot collide.
pub fn domain(test: &str) -> String {
    format!("t-{test}-{}", std::process::id())
}

pub fn until_reset(r: &RateLimitResponse, i: usize) -> Duration {
    let d = r.statuses[i].duration_until_reset.unwrap();
    Duration::new(d.seconds as u64, d.nanos as u32)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
