//! Load shapes: a closed loop at fixed concurrency and an open loop at a fixed offered
//! rate, both recording latencies in HDR histograms (microseconds).
//!
//! The open loop measures every operation from the time it was *scheduled*, not from
//! when it was actually sent: if the system stalls, the requests that should have gone
//! out meanwhile carry the stall in their latency instead of silently waiting
//! (coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::http::{Call, HttpClient};

/// Highest latency a histogram holds (10 minutes, in µs); larger values are clamped.
const MAX_MICROS: u64 = 600_000_000;

/// A histogram of microseconds with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Record `d` (clamped to the histogram's range).
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros())
        .unwrap_or(MAX_MICROS)
        .clamp(1, MAX_MICROS);
    hist.saturating_record(micros);
}

/// Percentiles of a histogram in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if hist.is_empty() {
            return Latency::default();
        }
        Latency {
            count: hist.len(),
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}

/// What one measured run did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Successful (2xx) operations in the measured window.
    pub ok: u64,
    /// Failed operations (non-2xx or transport errors) in the measured window.
    pub errors: u64,
    /// Responses by status code (0 = transport error).
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed_secs: f64,
    /// Successes per second.
    pub throughput: f64,
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Outcome {
    /// Fails when nothing succeeded: the harness, not the figure, is broken.
    pub fn require_samples(&self, what: &str) -> Result<()> {
        if self.ok == 0 {
            anyhow::bail!(
                "{what}: no successful sample ({} errors; first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }
}

/// Per-worker tallies, merged at the end.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: histogram(),
            ok: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            first_error: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.errors += other.errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn into_outcome(self, elapsed: Duration) -> Outcome {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Outcome {
            ok: self.ok,
            errors: self.errors,
            statuses: self.statuses,
            elapsed_secs: secs,
            throughput: self.ok as f64 / secs,
            latency: Latency::of(&self.hist),
            first_error: self.first_error,
        }
    }
}

/// A closed loop: `concurrency` workers, each sending its next request as soon as the
/// previous one answered.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    pub concurrency: usize,
    /// Requests before this are not measured (connections, caches, JIT-free warm-up of
    /// the pools).
    pub warmup: Duration,
    /// Length of the measured window.
    pub measure: Duration,
    /// Stop the measured window after this many requests, if reached first.
    pub max_requests: Option<u64>,
}

/// Runs a closed loop of `make(seq)` calls, worker `w` sending to `bases[w % len]`.
/// `seq` counts every request (warm-up included) from 0.
pub async fn closed_loop<F>(
    client: &HttpClient,
    bases: &[String],
    spec: &ClosedLoop,
    make: F,
) -> Outcome
where
    F: Fn(u64) -> Call + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let seq = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let end = measure_start + spec.measure;
    let max = spec.max_requests.unwrap_or(u64::MAX);
    let mut workers = Vec::with_capacity(spec.concurrency);
    for w in 0..spec.concurrency.max(1) {
        let base = bases[w % bases.len().max(1)].clone();
        let client = client.clone();
        let make = make.clone();
        let seq = seq.clone();
        let measured = measured.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let in_window = t0 >= measure_start;
                if in_window && measured.fetch_add(1, Ordering::Relaxed) >= max {
                    break;
                }
                let call = make(seq.fetch_add(1, Ordering::Relaxed));
                let result = client.send(&base, &call).await;
                if !in_window {
                    continue;
                }
                record(&mut tally.hist, t0.elapsed());
                match result {
                    Ok((status, body)) => {
                        *tally.statuses.entry(status.as_u16()).or_default() += 1;
                        if status.is_success() {
                            tally.ok += 1;
                        } else {
                            tally.errors += 1;
                            if tally.first_error.is_none() {
                                tally.first_error = Some(format!(
                                    "{} {}: {status} {}",
                                    call.method,
                                    call.path,
                                    String::from_utf8_lossy(&body[..body.len().min(300)])
                                ));
                            }
                        }
                    }
                    Err(err) => {
                        *tally.statuses.entry(0).or_default() += 1;
                        tally.errors += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!("{err:#}"));
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measure_start);
    total.into_outcome(elapsed)
}

/// An open loop: operations scheduled at a fixed rate whatever the answers do.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    /// Operations per second offered.
    pub rate: f64,
    pub duration: Duration,
    /// At most this many operations in flight; the next ones wait (and their wait
    /// counts in their latency, since it runs from the scheduled time).
    pub max_in_flight: usize,
}

impl OpenLoop {
    /// How many operations the schedule holds.
    pub fn count(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round().max(1.0) as u64
    }
}

/// Runs `op(index, scheduled_at)` for each scheduled slot; an op returns `Ok(true)` on
/// success, `Ok(false)` or `Err` on failure. Latency = completion − scheduled time.
pub async fn open_loop<F, Fut>(spec: &OpenLoop, op: F) -> Outcome
where
    F: Fn(u64, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool>> + Send + 'static,
{
    let op = Arc::new(op);
    let n = spec.count();
    let interval = 1.0 / spec.rate.max(1e-6);
    let tally = Arc::new(Mutex::new(Tally::new()));
    let permits = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let due = start + Duration::from_secs_f64(interval * i as f64);
        // Sleep only when ahead: the timer has millisecond resolution, so at high rates
        // the slots that are already due go out in a burst instead of one per tick.
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let op = op.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let result = op(i, due).await;
            let latency = due.elapsed();
            drop(permit);
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            record(&mut t.hist, latency);
            match result {
                Ok(true) => t.ok += 1,
                Ok(false) => t.errors += 1,
                Err(err) => {
                    t.errors += 1;
                    if t.first_error.is_none() {
                        t.first_error = Some(format!("{err:#}"));
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = Instant::now().saturating_duration_since(start);
    let total = {
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *t, Tally::new())
    };
    total.into_outcome(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_ms() {
        let mut h = histogram();
        for ms in 1..=100u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 100);
        assert!((l.p50_ms - 50.0).abs() < 0.5, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.5, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.5, "{l:?}");
        assert_eq!(Latency::of(&histogram()).count, 0);
    }

    #[tokio::test]
    async fn open_loop_counts_from_the_schedule() {
        let spec = OpenLoop {
            rate: 200.0,
            duration: Duration::from_millis(100),
            max_in_flight: 1,
        };
        // Each op takes 10 ms but one is in flight at a time: later ops wait, and their
        // wait shows in the latency.
        let out = open_loop(&spec, |_, _| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(true)
        })
        .await;
        assert_eq!(out.ok, 20);
        assert!(out.latency.max_ms > 100.0, "{:?}", out.latency);
    }
}
