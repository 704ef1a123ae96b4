//! Bench figures for `scripts/bench/report`: a bench that runs with `ICBT_BENCH_OUT`
//! set writes what it measured, beside what it printed, to `<ICBT_BENCH_OUT>/<bench>.json`
//! (one object, keys as the bench names them), which the report turns into tables and
//! plots. Without the variable nothing is written.

use std::path::PathBuf;

use serde_json::{Map, Value};

/// The figures of one bench run, written when dropped.
#[derive(Debug)]
pub struct Figures {
    bench: String,
    values: Map<String, Value>,
}

impl Figures {
    /// Figures of `bench` (the file's name).
    #[must_use]
    pub fn new(bench: &str) -> Self {
        Self {
            bench: bench.to_owned(),
            values: Map::new(),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.values.insert(key.to_owned(), value.into());
        self.write();
    }

    /// Appends `value` to the list at `key`.
    pub fn push(&mut self, key: &str, value: impl Into<Value>) {
        match self
            .values
            .entry(key.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(value.into()),
            other => *other = Value::Array(vec![value.into()]),
        }
        self.write();
    }

    /// Written after every change, so a bench that fails half-way still leaves what it
    /// measured before.
    fn write(&self) {
        let Some(dir) = std::env::var_os("ICBT_BENCH_OUT").map(PathBuf::from) else {
            return;
        };
        let _ = std::fs::create_dir_all(&dir);
        let text = serde_json::to_string_pretty(&self.values).unwrap_or_default();
        let _ = std::fs::write(dir.join(format!("{}.json", self.bench)), text);
    }
}

/// Milliseconds of `d`, for figures.
#[must_use]
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank; zero when empty.
#[must_use]
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The median and the 99th percentile of `sorted`, as every latency figure names them
/// (`p50_ms`, `p99_ms`).
#[must_use]
pub fn quantiles(sorted: &[std::time::Duration]) -> Value {
    serde_json::json!({
        "p50_ms": ms(percentile(sorted, 0.5)),
        "p99_ms": ms(percentile(sorted, 0.99)),
    })
}

/// [`quantiles`] with the distribution the report plots (`cdf_ms`).
#[must_use]
pub fn distribution(sorted: &[std::time::Duration]) -> Value {
    let mut figure = quantiles(sorted);
    figure["cdf_ms"] = cdf(sorted);
    figure
}

/// A latency distribution as the report plots it: 101 points, the 0th to the 100th
/// percentile, in milliseconds to the microsecond.
#[must_use]
pub fn cdf(sorted: &[std::time::Duration]) -> Value {
    (0..=100)
        .map(|p| (ms(percentile(sorted, f64::from(p) / 100.0)) * 1000.0).round() / 1000.0)
        .collect()
}

/// Resident memory of process `pid` now and at its peak, in KiB (Linux; 0 if it is
/// gone).
#[must_use]
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` valid synthetic national ids (fødselsnummer with check digits, born 1985), from
/// the `offset`-th on: distinct for distinct positions.
#[must_use]
pub fn national_ids(offset: u32, n: usize) -> Vec<String> {
    (offset..)
        .filter_map(|n: u32| {
            let head = format!("{:02}{:02}85{:03}", 1 + n % 28, 1 + (n / 28) % 12, n % 1000);
            icbt_gateway::domain::episode::NationalId::with_check_digits(&head)
                .map(|id| id.expose().to_owned())
        })
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{cdf, percentile};

    #[test]
    fn percentiles_are_nearest_rank_and_the_cdf_climbs_from_least_to_most() {
        let sorted: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(101));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(198));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(200));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let points: Vec<f64> = serde_json::from_value(cdf(&sorted)).unwrap();
        assert_eq!(points.len(), 101);
        assert!((points[0] - 1.0).abs() < 1e-9 && (points[100] - 200.0).abs() < 1e-9);
        assert!(points.windows(2).all(|w| w[0] <= w[1]));
    }
}
