//! From a `RateLimitRequest` to the buckets it names: parsing, validation and the Redis key.
//!
//! Everything a request may get wrong is refused here, with the descriptor's index and the
//! reason, before anything touches Redis: a bucket that reaches the store is always valid.

use core::fmt;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use policy_core::bucket::{Rate, MAX_AMOUNT};
use policy_core::calendar::Calendar;
use policy_core::global::calendar as quota;

/// Entries whose key starts with this are parameters for tollgate, not part of the counter key.
pub const PARAM_PREFIX: &str = "tollgate.";

/// What a descriptor asks of its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Plain rate limit service semantics: admit the cost if it fits, else answer `OVER_LIMIT` and
    /// add nothing. What strict mode (and a stock Envoy `ratelimit` filter) uses.
    Check,
    /// The cost was already admitted by a filter deciding locally: add it unconditionally (into
    /// debt if need be) and never answer `OVER_LIMIT`.
    Sync,
}

/// The unit of a descriptor's `limit` override: policy-core's, so the filter and the service
/// agree on each unit's length and wire value (`envoy.type.v3.RateLimitUnit`, whose numbering is
/// not in order of length; the tests check it against envoy-types).
pub use policy_core::global::descriptor::Unit;

/// The unit's part of a Redis key.
fn key_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Second => "s",
        Unit::Minute => "m",
        Unit::Hour => "h",
        Unit::Day => "d",
        Unit::Month => "mo",
        Unit::Year => "y",
    }
}

/// One descriptor, parsed: one bucket and what to do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// The Redis key holding the bucket's TAT; for a calendar quota, the stem its period's key
    /// is made from ([`Bucket::period_key`]).
    pub key: String,
    /// A calendar quota's calendar (`tollgate.reset`, `tollgate.utc_offset`): the bucket is a
    /// count of cells per period of it, no refill, one Redis key per period; `None` for a
    /// refilling (GCRA) bucket.
    pub calendar: Option<Calendar>,
    /// The rate, as policy-core computes with it.
    pub rate: Rate,
    /// The limit as the request gave it (echoed in `current_limit`).
    pub requests_per_unit: u32,
    /// The unit as the request gave it.
    pub unit: Unit,
    /// What to do.
    pub op: Op,
    /// Cells to add (`hits_addend`).
    pub cost: u64,
    /// Cells to give back first (`tollgate.refund`).
    pub refund: u64,
}

impl Bucket {
    /// A calendar quota's Redis key in the period containing `now` (on Redis's clock): the
    /// stem and the period's start, so a new period is a new counter, from zero. `None` for a
    /// refilling bucket.
    pub fn period_key(&self, now: policy_core::Nanos) -> Option<String> {
        let calendar = self.calendar?;
        Some(format!(
            "{}:{}",
            self.key,
            quota::period_key(calendar.start(now))
        ))
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// `domain` was empty.
    NoDomain,
    /// No descriptors at all.
    NoDescriptors,
    /// More descriptors than the service takes in one call.
    TooManyDescriptors {
        /// How many the request had.
        count: usize,
        /// The service's `--max-descriptors`.
        max: usize,
    },
    /// Two descriptors give different `tollgate.round` ids.
    RoundMismatch {
        /// The index of the descriptor whose id differs from the first one's.
        index: usize,
    },
    /// A round id on a request with a `check`: a replayed check could not be answered honestly
    /// (whether it fitted the first time is not kept), so round ids are for syncs only.
    RoundWithCheck {
        /// The index of the check.
        index: usize,
    },
    /// One descriptor was malformed.
    Descriptor {
        /// Its index in `descriptors`.
        index: usize,
        /// What is wrong with it.
        reason: DescriptorError,
    },
}

/// What is wrong with one descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DescriptorError {
    /// No `limit` override: the service has no configuration of its own to look a limit up in.
    NoLimit,
    /// `limit.unit` was UNKNOWN or a value this service does not know.
    Unit(i32),
    /// `limit.requests_per_unit` was zero.
    ZeroRate,
    /// No entries besides `tollgate.*` parameters, so no counter key.
    NoEntries,
    /// A `tollgate.*` parameter tollgate does not define.
    UnknownParameter(String),
    /// The same parameter twice.
    DuplicateParameter(String),
    /// A parameter whose value is not what it takes.
    BadParameter {
        /// The entry's key.
        key: String,
        /// The value given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// `hits_addend` above the largest cost a bucket takes.
    CostTooLarge(u64),
    /// A parameter that only a calendar quota takes (`tollgate.utc_offset`) without
    /// `tollgate.reset`, or one a calendar quota does not take (`tollgate.burst`) with it.
    NotForThisKind(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NoDomain => f.write_str("domain: must not be empty"),
            RequestError::NoDescriptors => f.write_str("descriptors: at least one is needed"),
            RequestError::TooManyDescriptors { count, max } => {
                write!(f, "descriptors: {count} in one request, at most {max}")
            }
            RequestError::RoundMismatch { index } => write!(
                f,
                "descriptors[{index}]: tollgate.round differs from the request's first round id"
            ),
            RequestError::RoundWithCheck { index } => write!(
                f,
                "descriptors[{index}]: a request with a tollgate.round id may only sync (op=check is not replayable)"
            ),
            RequestError::Descriptor { index, reason } => {
                write!(f, "descriptors[{index}]: {reason}")
            }
        }
    }
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorError::NoLimit => f.write_str(
                "limit: missing (tollgate-sync has no limits of its own; each descriptor carries its limit)",
            ),
            DescriptorError::Unit(unit) => write!(
                f,
                "limit.unit: {unit} is not one of SECOND, MINUTE, HOUR, DAY, MONTH, YEAR"
            ),
            DescriptorError::ZeroRate => f.write_str("limit.requests_per_unit: must be at least 1"),
            DescriptorError::NoEntries => f.write_str(
                "entries: needs at least one entry that is not a tollgate.* parameter",
            ),
            DescriptorError::UnknownParameter(key) => write!(
                f,
                "entries: unknown parameter '{key}' (tollgate.op, tollgate.burst, tollgate.refund, tollgate.round, tollgate.reset, tollgate.utc_offset)"
            ),
            DescriptorError::DuplicateParameter(key) => {
                write!(f, "entries: parameter '{key}' given twice")
            }
            DescriptorError::BadParameter {
                key,
                value,
                expected,
            } => write!(f, "entries: {key}='{value}': expected {expected}"),
            DescriptorError::CostTooLarge(cost) => {
                write!(f, "hits_addend: {cost} is above the largest cost, {MAX_AMOUNT}")
            }
            DescriptorError::NotForThisKind(key) if key.ends_with("utc_offset") => write!(
                f,
                "entries: '{key}' applies only to a calendar quota (with tollgate.reset)"
            ),
            DescriptorError::NotForThisKind(key) => write!(
                f,
                "entries: '{key}' does not apply to a calendar quota (tollgate.reset): it has no refill to burst over"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses every descriptor of `request`, refusing the whole request at the first bad one.
pub fn parse(request: &RateLimitRequest, max: usize) -> Result<Vec<Bucket>, RequestError> {
    if request.domain.is_empty() {
        return Err(RequestError::NoDomain);
    }
    if request.descriptors.is_empty() {
        return Err(RequestError::NoDescriptors);
    }
    if request.descriptors.len() > max {
        return Err(RequestError::TooManyDescriptors {
            count: request.descriptors.len(),
            max,
        });
    }
    let domain = escape(&request.domain);
    request
        .descriptors
        .iter()
        .enumerate()
        .map(|(index, descriptor)| {
            bucket(&domain, descriptor, request.hits_addend)
                .map_err(|reason| RequestError::Descriptor { index, reason })
        })
        .collect()
}

fn bucket(
    domain: &str,
    descriptor: &RateLimitDescriptor,
    request_hits: u32,
) -> Result<Bucket, DescriptorError> {
    let limit = descriptor.limit.ok_or(DescriptorError::NoLimit)?;
    let unit = Unit::from_wire(limit.unit).ok_or(DescriptorError::Unit(limit.unit))?;
    if limit.requests_per_unit == 0 {
        return Err(DescriptorError::ZeroRate);
    }
    let mut op = None;
    let mut burst = None;
    let mut refund = None;
    let mut round = None;
    let mut reset = None;
    let mut utc_offset = None;
    // The entries' part of the key; the rate's part, before it, depends on the parameters.
    let mut key = String::new();
    let mut entries = 0usize;
    for entry in &descriptor.entries {
        let Some(name) = entry.key.strip_prefix(PARAM_PREFIX) else {
            key.push(':');
            key.push_str(&escape(&entry.key));
            key.push('=');
            key.push_str(&escape(&entry.value));
            entries += 1;
            continue;
        };
        let slot = match name {
            "op" => {
                let value = match entry.value.as_str() {
                    "check" => Op::Check,
                    "sync" => Op::Sync,
                    _ => return Err(bad(entry.key.as_str(), &entry.value, "check or sync")),
                };
                set_once(&mut op, value, &entry.key)?;
                continue;
            }
            "round" => {
                // Read for the whole request by [`round_key`]; only checked here.
                if round_id(&entry.value).is_none() {
                    return Err(bad(&entry.key, &entry.value, ROUND_ID_EXPECTED));
                }
                set_once(&mut round, (), &entry.key)?;
                continue;
            }
            "reset" => {
                let period = quota::period(&entry.value)
                    .ok_or_else(|| bad(&entry.key, &entry.value, quota::EXPECTED_RESET))?;
                set_once(&mut reset, period, &entry.key)?;
                continue;
            }
            "utc_offset" => {
                let offset = quota::offset(&entry.value)
                    .ok_or_else(|| bad(&entry.key, &entry.value, quota::EXPECTED_OFFSET))?;
                set_once(&mut utc_offset, offset, &entry.key)?;
                continue;
            }
            "burst" => &mut burst,
            "refund" => &mut refund,
            _ => return Err(DescriptorError::UnknownParameter(entry.key.clone())),
        };
        let (value, expected) = match name {
            "burst" => (count(&entry.value, 1), "a whole number from 1 to 2^40"),
            _ => (count(&entry.value, 0), "a whole number from 0 to 2^40"),
        };
        let value = value.ok_or_else(|| bad(&entry.key, &entry.value, expected))?;
        set_once(slot, value, &entry.key)?;
    }
    if entries == 0 {
        return Err(DescriptorError::NoEntries);
    }
    let amount = u64::from(limit.requests_per_unit);
    let calendar = match (reset, utc_offset) {
        (None, Some(_)) => {
            return Err(DescriptorError::NotForThisKind(format!(
                "{PARAM_PREFIX}utc_offset"
            )))
        }
        (None, None) => None,
        // `quota::offset` bounds the offset as `Calendar::new` does.
        (Some(period), offset) => Calendar::new(period, offset.unwrap_or(0)),
    };
    if calendar.is_some() && burst.is_some() {
        return Err(DescriptorError::NotForThisKind(format!(
            "{PARAM_PREFIX}burst"
        )));
    }
    // Bounded above (u32 and MAX_AMOUNT), and the unit is non-zero, so this cannot fail; map the
    // error anyway rather than assume.
    let rate = match calendar {
        Some(calendar) => Rate::calendar(amount, calendar),
        None => Rate::new(amount, unit.period(), burst.unwrap_or(amount)),
    }
    .map_err(|_| DescriptorError::ZeroRate)?;
    // A quota's counters live apart from any refilling bucket's: `5/minute+0`, not `5/m`.
    let per = match calendar {
        Some(c) => format!("{}{:+}", c.period().word(), c.offset_secs()),
        None => key_name(unit).to_owned(),
    };
    let key = format!(
        "tollgate:{{{domain}}}:{}/{per}{key}",
        limit.requests_per_unit
    );
    // A refund counts only what its descriptor says: the request-level hits_addend (default 1)
    // is for descriptors that add.
    let cost = match (&descriptor.hits_addend, refund) {
        (Some(hits), _) => hits.value,
        (None, Some(_)) => 0,
        (None, None) => u64::from(request_hits.max(1)),
    };
    if cost > MAX_AMOUNT {
        return Err(DescriptorError::CostTooLarge(cost));
    }
    Ok(Bucket {
        key,
        calendar,
        rate,
        requests_per_unit: limit.requests_per_unit,
        unit,
        op: op.unwrap_or(Op::Check),
        cost,
        refund: refund.unwrap_or(0),
    })
}

/// How long an applied round id is remembered: a resend later than this (a service unreachable
/// for longer, while the first attempt had been applied) would count again.
pub const ROUND_TTL_MS: u64 = 600_000;

const ROUND_ID_EXPECTED: &str = "1 to 64 of A-Z a-z 0-9 . _ -";

fn round_id(value: &str) -> Option<&str> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(value)
}

/// The Redis key that marks `request`'s round as applied, `tollgate:{DOMAIN}:round:ID`, when it
/// carries a `tollgate.round` id (on any of its descriptors; every one given must agree), for
/// `buckets` as [`parse`] read them. A round id on a request with a `check` is refused.
pub fn round_key(
    request: &RateLimitRequest,
    buckets: &[Bucket],
) -> Result<Option<String>, RequestError> {
    let mut id: Option<&str> = None;
    for (index, descriptor) in request.descriptors.iter().enumerate() {
        for entry in &descriptor.entries {
            if entry.key.strip_prefix(PARAM_PREFIX) != Some("round") {
                continue;
            }
            match id {
                None => id = Some(entry.value.as_str()),
                Some(first) if first == entry.value => {}
                Some(_) => return Err(RequestError::RoundMismatch { index }),
            }
        }
    }
    let Some(id) = id.and_then(round_id) else {
        return Ok(None);
    };
    if let Some(index) = buckets.iter().position(|b| b.op == Op::Check) {
        return Err(RequestError::RoundWithCheck { index });
    }
    Ok(Some(format!(
        "tollgate:{{{}}}:round:{id}",
        escape(&request.domain)
    )))
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), DescriptorError> {
    if slot.replace(value).is_some() {
        return Err(DescriptorError::DuplicateParameter(key.to_owned()));
    }
    Ok(())
}

fn bad(key: &str, value: &str, expected: &'static str) -> DescriptorError {
    DescriptorError::BadParameter {
        key: key.to_owned(),
        value: value.chars().take(64).collect(),
        expected,
    }
}

/// A decimal count from `min` to [`MAX_AMOUNT`], digits only (no sign, no spaces).
fn count(value: &str, min: u64) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = value.parse().ok()?;
    (min..=MAX_AMOUNT).contains(&n).then_some(n)
}

/// Percent-encodes everything but `[A-Za-z0-9._-]`, so that `:`, `=`, `{` and `}` only ever
/// appear as separators and the hash tag: two different descriptors never share a key, and a
/// domain cannot break out of its `{…}`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(hex(byte >> 4));
            out.push(hex(byte & 0xf));
        }
    }
    out
}

fn hex(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0xf)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
    use envoy_types::pb::google::protobuf::UInt64Value;
    use policy_core::Nanos;

    fn descriptor(
        entries: &[(&str, &str)],
        limit: Option<(u32, RateLimitUnit)>,
    ) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            limit: limit.map(|(n, unit)| RateLimitOverride {
                requests_per_unit: n,
                unit: unit as i32,
            }),
            hits_addend: None,
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "api".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    fn one(d: RateLimitDescriptor) -> Result<Bucket, RequestError> {
        parse(&request(vec![d]), 10).map(|mut b| b.remove(0))
    }

    const PER_MINUTE: Option<(u32, RateLimitUnit)> = Some((100, RateLimitUnit::Minute));

    #[test]
    fn entries_make_the_key_and_parameters_do_not() {
        let b = one(descriptor(
            &[
                ("user", "alice"),
                ("tollgate.op", "sync"),
                ("tollgate.burst", "150"),
            ],
            PER_MINUTE,
        ))
        .unwrap();
        assert_eq!(b.key, "tollgate:{api}:100/m:user=alice");
        assert_eq!(b.op, Op::Sync);
        assert_eq!(b.rate.burst(), 150);
        assert_eq!(b.rate.amount(), 100);
        assert_eq!(b.rate.period(), Nanos::from_secs(60));
        assert_eq!((b.cost, b.refund), (1, 0));
    }

    #[test]
    fn a_calendar_quota_counts_per_period_under_a_key_of_its_own() {
        let b = one(descriptor(
            &[
                ("user", "alice"),
                ("tollgate.reset", "month"),
                ("tollgate.utc_offset", "-28800"),
            ],
            Some((100, RateLimitUnit::Month)),
        ))
        .unwrap();
        assert_eq!(b.key, "tollgate:{api}:100/month-28800:user=alice");
        let calendar = b.calendar.unwrap();
        assert_eq!(
            (calendar.period().word(), calendar.offset_secs()),
            ("month", -28_800)
        );
        assert_eq!(b.rate.calendar_of(), Some(calendar));
        assert_eq!(b.rate.amount(), 100);
        // 2026-03-01 08:00 UTC is midnight at -08:00: March's counter from that instant on.
        let march = Nanos::from_secs(1_772_352_000);
        assert_eq!(
            b.period_key(march).unwrap(),
            "tollgate:{api}:100/month-28800:user=alice:@1772352000"
        );
        assert_eq!(
            b.period_key(Nanos(march.0 - 1)).unwrap(),
            "tollgate:{api}:100/month-28800:user=alice:@1769932800"
        );
        let gcra = one(descriptor(&[("user", "alice")], PER_MINUTE)).unwrap();
        assert_eq!((gcra.calendar, gcra.period_key(march)), (None, None));
        let utc = one(descriptor(
            &[("user", "alice"), ("tollgate.reset", "minute")],
            PER_MINUTE,
        ))
        .unwrap();
        assert_eq!(utc.key, "tollgate:{api}:100/minute+0:user=alice");
    }

    #[test]
    fn defaults_are_check_burst_equal_to_the_rate_and_cost_one() {
        let b = one(descriptor(&[("user", "bob")], PER_MINUTE)).unwrap();
        assert_eq!((b.op, b.rate.burst(), b.cost), (Op::Check, 100, 1));
    }

    #[test]
    fn hits_addend_per_descriptor_overrides_the_request() {
        let mut d = descriptor(&[("user", "bob")], PER_MINUTE);
        let mut req = request(vec![d.clone()]);
        req.hits_addend = 7;
        assert_eq!(parse(&req, 10).unwrap()[0].cost, 7);
        d.hits_addend = Some(UInt64Value { value: 0 });
        req.descriptors = vec![d];
        assert_eq!(
            parse(&req, 10).unwrap()[0].cost,
            0,
            "an explicit 0 is a peek"
        );
    }

    #[test]
    fn a_refund_adds_nothing_unless_its_descriptor_says_so() {
        let d = descriptor(&[("user", "bob"), ("tollgate.refund", "40")], PER_MINUTE);
        let mut req = request(vec![d]);
        req.hits_addend = 5;
        let b = &parse(&req, 10).unwrap()[0];
        assert_eq!((b.refund, b.cost), (40, 0));
    }

    #[test]
    fn every_unit_maps_explicitly_and_month_is_thirty_days() {
        for (unit, secs, name) in [
            (RateLimitUnit::Second, 1, "s"),
            (RateLimitUnit::Minute, 60, "m"),
            (RateLimitUnit::Hour, 3_600, "h"),
            (RateLimitUnit::Day, 86_400, "d"),
            (RateLimitUnit::Month, 30 * 86_400, "mo"),
            (RateLimitUnit::Year, 365 * 86_400, "y"),
        ] {
            let b = one(descriptor(&[("k", "v")], Some((3, unit)))).unwrap();
            assert_eq!(b.rate.period(), Nanos::from_secs(secs));
            assert_eq!(b.unit.to_wire(), unit as i32);
            assert_eq!(b.key, format!("tollgate:{{api}}:3/{name}:k=v"));
        }
    }

    #[test]
    fn separators_and_braces_in_values_are_escaped() {
        let mut req = request(vec![descriptor(&[("a:b", "x=y}{")], PER_MINUTE)]);
        req.domain = "my}dom".into();
        assert_eq!(
            parse(&req, 10).unwrap()[0].key,
            "tollgate:{my%7Ddom}:100/m:a%3Ab=x%3Dy%7D%7B"
        );
    }

    #[test]
    fn malformed_descriptors_name_their_index_and_reason() {
        let good = descriptor(&[("user", "a")], PER_MINUTE);
        let cases: Vec<(RateLimitDescriptor, &str)> = vec![
            (
                descriptor(&[("user", "a")], None),
                "descriptors[1]: limit: missing",
            ),
            (
                descriptor(&[("user", "a")], Some((5, RateLimitUnit::Unknown))),
                "descriptors[1]: limit.unit: 0 is not",
            ),
            (
                descriptor(&[("user", "a")], Some((0, RateLimitUnit::Second))),
                "descriptors[1]: limit.requests_per_unit",
            ),
            (
                descriptor(&[("tollgate.op", "sync")], PER_MINUTE),
                "descriptors[1]: entries: needs at least one",
            ),
            (
                descriptor(&[("user", "a"), ("tollgate.op", "add")], PER_MINUTE),
                "descriptors[1]: entries: tollgate.op='add': expected check or sync",
            ),
            (
                descriptor(&[("user", "a"), ("tollgate.burst", "0")], PER_MINUTE),
                "descriptors[1]: entries: tollgate.burst='0'",
            ),
            (
                descriptor(&[("user", "a"), ("tollgate.burst", "-3")], PER_MINUTE),
                "tollgate.burst='-3'",
            ),
            (
                descriptor(
                    &[("user", "a"), ("tollgate.refund", "1099511627777")],
                    PER_MINUTE,
                ),
                "tollgate.refund='1099511627777'",
            ),
            (
                descriptor(&[("user", "a"), ("tollgate.bust", "3")], PER_MINUTE),
                "unknown parameter 'tollgate.bust'",
            ),
            (
                descriptor(
                    &[
                        ("user", "a"),
                        ("tollgate.op", "sync"),
                        ("tollgate.op", "check"),
                    ],
                    PER_MINUTE,
                ),
                "parameter 'tollgate.op' given twice",
            ),
        ];
        for (bad, want) in cases {
            let err = parse(&request(vec![good.clone(), bad]), 10).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text:?} does not contain {want:?}");
        }
        let mut unit7 = good.clone();
        unit7.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: 7,
        });
        assert!(one(unit7)
            .unwrap_err()
            .to_string()
            .contains("limit.unit: 7"));
        let mut huge = good.clone();
        huge.hits_addend = Some(UInt64Value { value: u64::MAX });
        assert!(one(huge).unwrap_err().to_string().contains("hits_addend"));
    }

    #[test]
    fn request_level_errors() {
        let d = descriptor(&[("user", "a")], PER_MINUTE);
        let mut req = request(vec![d.clone(); 3]);
        assert_eq!(
            parse(&req, 2).unwrap_err(),
            RequestError::TooManyDescriptors { count: 3, max: 2 }
        );
        req.descriptors.clear();
        assert_eq!(parse(&req, 2).unwrap_err(), RequestError::NoDescriptors);
        req.descriptors.push(d);
        req.domain.clear();
        assert_eq!(parse(&req, 2).unwrap_err(), RequestError::NoDomain);
    }
}
