//! Results: one row per figure, next to its same-run baseline and the target,
//! printed as a markdown table and written as JSON.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// What a figure is compared with.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// value / baseline ≥ x.
    RatioAtLeast(f64),
    /// value / baseline ≤ x.
    RatioAtMost(f64),
    /// value < x (in the row's unit).
    Below(f64),
    /// value ≥ x (in the row's unit).
    AtLeast(f64),
}

impl Target {
    fn describe(&self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(x) => format!("≥ {:.0}% of baseline", x * 100.0),
            Target::RatioAtMost(x) => format!("≤ {x}× baseline"),
            Target::Below(x) => format!("< {} {unit}", number(*x)),
            Target::AtLeast(x) => format!("≥ {} {unit}", number(*x)),
        }
    }

    fn met(&self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::RatioAtLeast(x) => ratio.map(|r| r >= *x),
            Target::RatioAtMost(x) => ratio.map(|r| r <= *x),
            Target::Below(x) => Some(value < *x),
            Target::AtLeast(x) => Some(value >= *x),
        }
    }
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, metric: &str, value: f64, unit: &str) -> Self {
        Row {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_name: None,
            ratio: None,
            target: None,
            target_text: None,
            met: None,
            note: None,
        }
    }

    /// Compare with `baseline` (named): sets the ratio value / baseline.
    pub fn baseline(mut self, name: &str, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self.baseline_name = Some(name.to_owned());
        self.ratio = (baseline > 0.0).then(|| self.value / baseline);
        self
    }

    /// Check against `target`.
    pub fn target(mut self, target: Target) -> Self {
        self.target_text = Some(target.describe(&self.unit));
        self.met = target.met(self.value, self.ratio);
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub rows: Vec<Row>,
    /// Raw results per scenario (histograms' percentiles, counts, settings).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Scenarios skipped or failed, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        eprintln!(
            "bench:   {} / {}: {} {}{}",
            row.scenario,
            row.metric,
            number(row.value),
            row.unit,
            row.ratio
                .map(|r| format!(
                    " ({:.2}× {})",
                    r,
                    row.baseline_name.as_deref().unwrap_or("")
                ))
                .unwrap_or_default()
        );
        self.rows.push(row);
    }

    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.details.insert(key.to_owned(), value);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }

    /// The markdown table (and notes).
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| scenario | metric | value | baseline | ratio | target | met? |\n|---|---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let baseline = match (row.baseline, &row.baseline_name) {
                (Some(b), Some(name)) => format!("{} {} ({name})", number(b), row.unit),
                _ => "—".to_owned(),
            };
            let ratio = row
                .ratio
                .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"));
            let met = match row.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "—",
            };
            let mut value = format!("{} {}", number(row.value), row.unit);
            if let Some(note) = &row.note {
                value.push_str(&format!(" ({note})"));
            }
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                row.scenario,
                row.metric,
                value,
                baseline,
                ratio,
                row.target_text.as_deref().unwrap_or("—"),
                met
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }

    /// Write the JSON document to `path` (directories created).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Failed to create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("Failed to write {}", path.display()))
    }
}

/// A figure with sensible precision and thousands separators.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let abs = x.abs();
    if abs >= 1000.0 {
        let rounded = x.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if abs >= 100.0 {
        format!("{x:.0}")
    } else if abs >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(999.4), "999");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
    }

    #[test]
    fn rows_compute_ratios_and_targets() {
        let row = Row::new("write", "throughput", 300.0, "req/s")
            .baseline("axum+nats", 1000.0)
            .target(Target::RatioAtLeast(0.3));
        assert_eq!(row.met, Some(true));
        let row = Row::new("write", "p99", 60.0, "ms").target(Target::Below(50.0));
        assert_eq!(row.met, Some(false));
        let mut report = Report::default();
        report.push(row);
        assert!(report.markdown().contains("**not met**"));
    }
}
