//! Reading a service's `/metrics` (Prometheus text format) in tests, and finding the
//! metric names a PromQL expression uses.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format (comments and blank lines skipped; an unparsable line is
    /// an error, since the exporter never writes one).
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("bad sample line {line:?}"))?);
        }
        Ok(Scrape { samples })
    }

    /// `GET url` and parse it.
    pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<Self> {
        let response = http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            bail!("GET {url} answered {}", response.status());
        }
        Self::parse(&response.text().await?)
    }

    /// Every sample name (histograms as `_bucket`, `_sum`, `_count`).
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }

    /// The samples of `name` whose labels include every pair of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum of [`Self::find`]'s values; `None` when no sample matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for s in self.find(name, labels) {
            found = true;
            total += s.value;
        }
        found.then_some(total)
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (head, value) = line.rsplit_once(' ').context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().context("value is not a number")?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').context("unclosed labels")?;
            (name.to_owned(), parse_labels(body)?)
        }
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut body: &str) -> Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    loop {
        body = body.trim_start_matches(',').trim_start();
        if body.is_empty() {
            return Ok(labels);
        }
        let (key, rest) = body.split_once("=\"").context("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("dangling escape"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.push((key.trim().to_owned(), value));
        body = &rest[end + 1..];
    }
}

/// The metric names of the mesh (`mesh_…`) a PromQL expression (or any text, such as a
/// dashboard's JSON) mentions.
pub fn mesh_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_name_char(bytes[i - 1]);
        if starts_word && text[i..].starts_with("mesh_") {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |n| i + n);
            names.insert(text[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exporters_text() -> Result<()> {
        let text = "# HELP x y\n# TYPE mesh_a_total counter\nmesh_a_total{route=\"/v1/e/{id}\",method=\"PUT\"} 3\nmesh_b 1.5\nmesh_c_bucket{le=\"+Inf\"} 2\n";
        let s = Scrape::parse(text)?;
        assert_eq!(s.sum("mesh_a_total", &[("method", "PUT")]), Some(3.0));
        assert_eq!(s.sum("mesh_a_total", &[("method", "GET")]), None);
        assert_eq!(
            s.find("mesh_a_total", &[])
                .next()
                .and_then(|x| x.label("route")),
            Some("/v1/e/{id}")
        );
        assert_eq!(s.sum("mesh_b", &[]), Some(1.5));
        assert!(s.names().contains("mesh_c_bucket"));
        assert!(Scrape::parse("mesh_x{a=\"1} 2").is_err());
        Ok(())
    }

    #[test]
    fn finds_mesh_names_in_promql() {
        let names = mesh_metric_names(
            "sum by (route) (rate(mesh_gateway_requests_total{status=~\"5..\"}[5m])) / x_mesh_no + mesh_dlq_depth > 0",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["mesh_dlq_depth", "mesh_gateway_requests_total"]
        );
    }
}
