//! Metrics defined by the guest, with Envoy's rules, shared by every worker like Envoy's stats.
//!
//! Envoy's rules (`Context::incrementMetric`/`recordMetric`/`getMetric`): counters only go up
//! (a non-positive increment is `BadArgument`), gauges go both ways and `record` sets them,
//! histograms only `record` and cannot be read back through the ABI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::abi::{MetricType, Status};

#[derive(Debug)]
struct Metric {
    kind: MetricType,
    name: String,
    value: i64,
    samples: Vec<u64>,
}

#[derive(Debug, Default)]
struct Registry {
    metrics: Vec<Metric>,
    by_name: HashMap<String, usize>,
}

/// The stats of one simulated Envoy process. Clones share the same registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `proxy_define_metric`: the same name gives the same id in every worker.
    pub(crate) fn define(&self, kind: MetricType, name: &str) -> u32 {
        let mut registry = self.lock();
        if let Some(&index) = registry.by_name.get(name) {
            return index as u32 + 1;
        }
        registry.metrics.push(Metric {
            kind,
            name: name.to_owned(),
            value: 0,
            samples: Vec::new(),
        });
        let index = registry.metrics.len() - 1;
        registry.by_name.insert(name.to_owned(), index);
        index as u32 + 1
    }

    fn with<R>(
        &self,
        id: u32,
        f: impl FnOnce(&mut Metric) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let mut registry = self.lock();
        let index = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        registry
            .metrics
            .get_mut(index)
            .ok_or(Status::NotFound)
            .and_then(f)
    }

    /// `proxy_increment_metric`.
    pub(crate) fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        self.with(id, |metric| match metric.kind {
            MetricType::Counter if delta > 0 => {
                metric.value = metric.value.saturating_add(delta);
                Ok(())
            }
            MetricType::Gauge => {
                metric.value = metric.value.saturating_add(delta);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        })
    }

    /// `proxy_record_metric`.
    pub(crate) fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let signed = i64::try_from(value).unwrap_or(i64::MAX);
        self.with(id, |metric| {
            match metric.kind {
                MetricType::Counter => metric.value = metric.value.saturating_add(signed),
                MetricType::Gauge => metric.value = signed,
                _ => metric.samples.push(value),
            }
            Ok(())
        })
    }

    /// `proxy_get_metric`.
    pub(crate) fn get(&self, id: u32) -> Result<u64, Status> {
        self.with(id, |metric| match metric.kind {
            MetricType::Counter | MetricType::Gauge => Ok(metric.value as u64),
            _ => Err(Status::BadArgument),
        })
    }

    /// The value of the counter or gauge named `name`.
    pub fn value(&self, name: &str) -> Option<i64> {
        let registry = self.lock();
        let index = *registry.by_name.get(name)?;
        registry
            .metrics
            .get(index)
            .filter(|m| m.kind != MetricType::Histogram)
            .map(|m| m.value)
    }

    /// The samples recorded in the histogram named `name`.
    pub fn samples(&self, name: &str) -> Option<Vec<u64>> {
        let registry = self.lock();
        let index = *registry.by_name.get(name)?;
        registry
            .metrics
            .get(index)
            .filter(|m| m.kind == MetricType::Histogram)
            .map(|m| m.samples.clone())
    }

    /// Every defined metric's name and kind, in definition order.
    pub fn names(&self) -> Vec<(String, MetricType)> {
        self.lock()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.kind))
            .collect()
    }
}
