//! Redis: the connection, the batch script, and turning its reply into typed outcomes.
//!
//! One `ShouldRateLimit` is one `EVALSHA` of [`SCRIPT`] over all its keys (redis-rs sends
//! `EVALSHA` and, on `NOSCRIPT` — a restarted or failed-over Redis — loads the script and
//! retries once). The connection is a [`ConnectionManager`]: created lazily, so the service starts
//! and answers `UNAVAILABLE` while Redis is down, and reconnects by itself afterwards.

use core::fmt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use policy_core::bucket::Tat;
use policy_core::Nanos;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisError, Script};

use crate::descriptor::{Bucket, Op, ROUND_TTL_MS};
use policy_core::global::calendar::KEY_MARGIN;

/// The batch script (see the file for its argument layout).
pub const SCRIPT: &str = include_str!("gcra.lua");

/// What the script reports for one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The key's state when the batch began.
    pub before: Tat,
    /// Its state right after this descriptor (what is stored, for the key's last descriptor).
    pub after: Tat,
    /// `false` for a check that did not fit.
    pub fits: bool,
}

/// The script's reply to one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Redis's clock when the script ran (`TIME`, microsecond resolution).
    pub now: Nanos,
    /// `false` when the batch's round id had been applied before: nothing was added, and each
    /// row holds its key's current state (`before` = `after`).
    pub applied: bool,
    /// One row per descriptor, in order.
    pub rows: Vec<Row>,
}

impl Reply {
    /// The states the batch started from, by key, as [`crate::model::apply`] takes them.
    pub fn before<'a>(&self, buckets: &'a [Bucket]) -> HashMap<&'a str, Tat> {
        buckets
            .iter()
            .zip(&self.rows)
            .map(|(b, row)| (b.key.as_str(), row.before))
            .collect()
    }
}

/// Why a batch got no answer from Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis could not be reached or failed the command (connection refused, reset, timeout,
    /// AUTH failed, loading, …).
    Redis(RedisError),
    /// Redis answered, but not with what the script returns (a key holding something else).
    Reply(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Redis(e) => write!(f, "redis: {e}"),
            StoreError::Reply(why) => write!(f, "unexpected reply from redis: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Whether this is the store being unreachable or slow (retry later), rather than a reply
    /// that will not change by retrying.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                !matches!(e.kind(), redis::ErrorKind::Server(_)) || e.is_timeout()
            }
            StoreError::Reply(_) => false,
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The parsed `redis://` or `rediss://` URL, with the password (if any) already applied.
    pub info: ConnectionInfo,
    /// Bound on connecting and on each reply.
    pub timeout: Duration,
    /// Bound on each reply at the connection (default: `timeout`); the service bounds each
    /// call itself, so this is set to the largest call's bound (which grows with its size).
    pub reply_timeout: Duration,
}

/// Why a Redis configuration was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse.
    Url(RedisError),
    /// The URL carries a password: it would show in `ps` and shell history.
    PasswordInUrl,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Url(e) => write!(f, "--redis: {e}"),
            ConfigError::PasswordInUrl => f.write_str(
                "--redis: the URL carries a password; give it in --redis-password-file or TOLLGATE_REDIS_PASSWORD instead",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl RedisConfig {
    /// Parses `url` and applies `password` (from a file or the environment, never the URL).
    pub fn new(
        url: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<RedisConfig, ConfigError> {
        let info = url.into_connection_info().map_err(ConfigError::Url)?;
        if info.redis_settings().password().is_some() {
            return Err(ConfigError::PasswordInUrl);
        }
        // Without TCP_NODELAY a batch that spans several segments waits for the delayed ACK
        // (~40 ms on Linux) before its last segment leaves.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let info = info.set_tcp_settings(tcp);
        let info = match password {
            Some(password) => {
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        Ok(RedisConfig {
            info,
            timeout,
            reply_timeout: timeout,
        })
    }
}

/// The Redis side of the service; cheap to clone (one multiplexed connection shared by all).
#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
    script: Script,
    /// Redis's clock minus this host's, in nanoseconds, as of the last reply: where the service
    /// expects Redis's clock to be when it names a calendar quota's period (the script checks).
    skew: Arc<AtomicI64>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("script", &self.script.get_hash())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store that connects on first use and reconnects after failures.
    pub fn new(config: &RedisConfig) -> Result<Store, StoreError> {
        let client = Client::open(config.info.clone()).map_err(StoreError::Redis)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.reply_timeout.max(config.timeout)))
            // Reconnection is retried on the next call, so one call never waits through a
            // long backoff.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(StoreError::Redis)?;
        Ok(Store {
            connection,
            script: Script::new(SCRIPT),
            skew: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Runs one batch atomically. The caller bounds it with its own timeout too.
    pub async fn run(&self, buckets: &[Bucket]) -> Result<Reply, StoreError> {
        self.run_round(buckets, None).await
    }

    /// Runs one batch atomically, once per `round` key ([`crate::descriptor::round_key`]): a
    /// batch whose round key was set by an earlier run adds nothing and answers its keys'
    /// current state ([`Reply::applied`] false). The key is set in the same script as the
    /// writes, remembered for [`ROUND_TTL_MS`].
    pub async fn run_round(
        &self,
        buckets: &[Bucket],
        round: Option<&str>,
    ) -> Result<Reply, StoreError> {
        self.run_at(buckets, round, None).await
    }

    /// [`Store::run_round`] on `clock` instead of Redis's `TIME` when it is given: for tests of
    /// calendar periods' boundaries only (the service always runs on Redis's clock).
    ///
    /// A calendar quota's key names its period, which the service works out from where it
    /// expects Redis's clock to be (this host's clock and the difference the last reply
    /// showed); the script refuses to run a batch whose periods do not contain its `TIME`, and
    /// the batch is sent again for the periods of the `TIME` it answered (a period's start
    /// falling between the two is the only way to need a second try twice).
    pub async fn run_at(
        &self,
        buckets: &[Bucket],
        round: Option<&str>,
        clock: Option<Nanos>,
    ) -> Result<Reply, StoreError> {
        let mut now = clock.unwrap_or_else(|| self.expected_redis_time());
        for _ in 0..3 {
            match self.invoke(buckets, round, clock, now).await? {
                Attempt::Ran(reply) => {
                    if clock.is_none() {
                        self.note_redis_time(reply.now);
                    }
                    return Ok(reply);
                }
                Attempt::OtherPeriod(redis_now) => {
                    self.note_redis_time(redis_now);
                    now = redis_now;
                }
            }
        }
        Err(StoreError::Reply(
            "a calendar period began on each of three tries".into(),
        ))
    }

    fn local_now() -> Nanos {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    fn expected_redis_time(&self) -> Nanos {
        let skew = self.skew.load(Ordering::Relaxed);
        let local = Self::local_now().0;
        Nanos(local.saturating_add_signed(skew))
    }

    fn note_redis_time(&self, redis: Nanos) {
        let local = Self::local_now().0;
        let skew = i128::from(redis.0) - i128::from(local);
        let skew = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
        self.skew.store(skew, Ordering::Relaxed);
    }

    async fn invoke(
        &self,
        buckets: &[Bucket],
        round: Option<&str>,
        clock: Option<Nanos>,
        now: Nanos,
    ) -> Result<Attempt, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(if round.is_some() {
            ROUND_TTL_MS.to_string()
        } else {
            String::from("0")
        });
        invocation.arg(match clock {
            Some(t) => format!("{} {}", t.0 / 1_000_000_000, t.0 % 1_000_000_000 / 1_000),
            None => String::new(),
        });
        for b in buckets {
            let op = match b.op {
                Op::Check => "c",
                Op::Sync => "s",
            };
            if let (Some(calendar), Some(key)) = (b.calendar, b.period_key(now)) {
                // A quota counts cells: no scaling by a period.
                let (start, end) = (calendar.start(now), calendar.end(now));
                let expire_ms = end.0.saturating_add(KEY_MARGIN.0) / 1_000_000;
                invocation
                    .key(key)
                    .arg(op)
                    .arg(b.cost)
                    .arg(b.rate.amount())
                    .arg(b.rate.amount())
                    .arg(b.refund)
                    .arg(format!("{} {} {expire_ms}", start.0, end.0));
                continue;
            }
            let period = u128::from(b.rate.period().0);
            invocation
                .key(b.key.as_str())
                .arg(op)
                .arg(u128::from(b.cost).saturating_mul(period).to_string())
                .arg(
                    u128::from(b.rate.burst())
                        .saturating_mul(period)
                        .to_string(),
                )
                .arg(b.rate.amount())
                .arg(u128::from(b.refund).saturating_mul(period).to_string())
                .arg("");
        }
        if let Some(round) = round {
            invocation.key(round);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::Redis)?;
        if let [sec, usec, marker] = reply.as_slice() {
            if marker == OTHER_PERIOD {
                return Ok(Attempt::OtherPeriod(time(sec, usec)?));
            }
        }
        parse_reply(&reply, buckets.len()).map(Attempt::Ran)
    }

    /// The connection, for tests and tools that read keys directly.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

/// What the script answers instead of running a batch whose calendar periods do not contain its
/// clock.
const OTHER_PERIOD: &str = "period";

/// One try of a batch.
enum Attempt {
    /// The script ran it.
    Ran(Reply),
    /// Redis's clock (given) was in another period than a quota's key named: nothing ran.
    OtherPeriod(Nanos),
}

fn time(sec: &str, usec: &str) -> Result<Nanos, StoreError> {
    let bad = |why: &str| StoreError::Reply(why.to_owned());
    let sec: u64 = sec.parse().map_err(|_| bad("TIME seconds"))?;
    let usec: u64 = usec.parse().map_err(|_| bad("TIME microseconds"))?;
    Ok(Nanos(
        sec.saturating_mul(1_000_000_000)
            .saturating_add(usec.saturating_mul(1_000)),
    ))
}

fn parse_reply(reply: &[String], descriptors: usize) -> Result<Reply, StoreError> {
    let bad = |why: &str| StoreError::Reply(why.to_owned());
    let [sec, usec, applied, rows @ ..] = reply else {
        return Err(bad("no TIME"));
    };
    let applied = match applied.as_str() {
        "1" => true,
        "0" => false,
        _ => return Err(bad("applied")),
    };
    if rows.len() != descriptors * 3 {
        return Err(StoreError::Reply(format!(
            "{} values for {descriptors} descriptors",
            rows.len()
        )));
    }
    let now = time(sec, usec)?;
    let rows = rows
        .chunks_exact(3)
        .map(|row| match row {
            [before, after, fits] => Ok(Row {
                before: tat(before)?,
                after: tat(after)?,
                fits: fits == "1",
            }),
            _ => Err(bad("row")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reply { now, applied, rows })
}

/// A decimal TAT; one beyond `u128` (only reachable by centuries of debt) saturates, as
/// policy-core's arithmetic does.
fn tat(text: &str) -> Result<Tat, StoreError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::Reply(format!("'{text}' is not a TAT")));
    }
    Ok(Tat(text.parse().unwrap_or(u128::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused() {
        let err = RedisConfig::new(
            "redis://:hunter2@127.0.0.1:6379",
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::PasswordInUrl));
        assert!(!err.to_string().contains("hunter2"));
        let ok = RedisConfig::new(
            "redis://127.0.0.1:6379/0",
            Some("s3cret"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(ok.info.redis_settings().password(), Some("s3cret"));
        assert!(
            RedisConfig::new("rediss://redis.example:6380", None, Duration::from_secs(1)).is_ok()
        );
        assert!(RedisConfig::new("http://x", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn replies_parse_and_malformed_ones_are_errors() {
        let ok: Vec<String> = ["1700000000", "000123", "1", "0", "42", "1"]
            .map(String::from)
            .to_vec();
        let r = parse_reply(&ok, 1).unwrap();
        assert_eq!(r.now, Nanos(1_700_000_000_000_123_000));
        assert!(r.applied);
        assert_eq!(
            r.rows,
            [Row {
                before: Tat(0),
                after: Tat(42),
                fits: true
            }]
        );
        assert!(parse_reply(&ok, 2).is_err());
        let huge = "9".repeat(50);
        let sat = vec![
            "1".into(),
            "0".into(),
            "0".into(),
            "0".into(),
            huge,
            "0".into(),
        ];
        let replay = parse_reply(&sat, 1).unwrap();
        assert_eq!(replay.rows[0].after, Tat(u128::MAX));
        assert!(!replay.applied);
        let bad = vec![
            "1".into(),
            "0".into(),
            "1".into(),
            "-1".into(),
            "0".into(),
            "0".into(),
        ];
        assert!(parse_reply(&bad, 1).is_err());
    }
}
