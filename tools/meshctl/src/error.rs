//! What can go wrong, and the exit code each failure maps to.

use contracts::error::{FieldError, Problem};
use serde::Deserialize;

/// Exit codes: scripts branch on these.
pub mod exit {
    pub const OK: u8 = 0;
    /// Anything not covered below: server errors, network errors, failed jobs.
    pub const OTHER: u8 = 1;
    /// The command line or an input file is wrong.
    pub const USAGE: u8 = 2;
    /// Not logged in, the session cannot be refreshed, or the role may not do this (401/403).
    pub const AUTH: u8 = 3;
    /// The dead letter, job or message does not exist (404).
    pub const NOT_FOUND: u8 = 4;
    /// Ctrl-C while waiting for a job (which goes on on the server).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    /// No usable credentials (before any request was made).
    #[error("{0}")]
    NotLoggedIn(String),
    /// The API answered with an error status.
    #[error("{0}")]
    Api(ApiProblem),
    #[error("cannot reach the gateway: {method} {url} failed: {detail}")]
    Network {
        method: String,
        url: String,
        detail: String,
    },
    /// Nothing matched (an empty answer where one was expected).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    Interrupted(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::NotLoggedIn(_) => exit::AUTH,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::Api(p) => match p.status {
                401 | 403 => exit::AUTH,
                404 => exit::NOT_FOUND,
                _ => exit::OTHER,
            },
            Error::Network { .. } | Error::Other(_) | Error::Output(_) => exit::OTHER,
            Error::Interrupted(_) => exit::INTERRUPTED,
        }
    }

    /// Lines after `error: …` that help the operator on.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Error::Api(p) => {
                let mut lines: Vec<String> = p
                    .errors
                    .iter()
                    .map(|e| format!("  {}: {}", e.field, e.message))
                    .collect();
                if let Some(trace) = &p.trace_id {
                    lines.push(format!("  trace id: {trace}"));
                }
                if p.status == 401 {
                    lines.push("hint: log in again with `meshctl login`".to_owned());
                }
                lines
            }
            Error::Network { .. } => {
                vec!["hint: set the gateway with --url or MESH_URL".to_owned()]
            }
            _ => Vec::new(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem+json answer, tolerant of codes this build does not know, or a plain HTTP
/// error when the body is not problem+json (a proxy's 502 page, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProblem {
    pub status: u16,
    pub title: String,
    pub code: String,
    pub detail: Option<String>,
    pub errors: Vec<FieldError>,
    pub trace_id: Option<String>,
}

impl std::fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// The fields of [`Problem`] with `code` as plain text.
#[derive(Deserialize)]
struct LooseProblem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<FieldError>,
    #[serde(default)]
    trace_id: Option<String>,
}

impl ApiProblem {
    pub fn from_response(status: u16, reason: Option<&str>, body: &[u8]) -> ApiProblem {
        if let Ok(p) = serde_json::from_slice::<Problem>(body) {
            return ApiProblem {
                status,
                title: p.title,
                code: p.code.as_str().to_owned(),
                detail: p.detail,
                errors: p.errors,
                trace_id: p.trace_id,
            };
        }
        let reason = reason.unwrap_or("HTTP error").to_owned();
        let loose = serde_json::from_slice::<LooseProblem>(body)
            .ok()
            .filter(|p| p.title.is_some() || p.code.is_some());
        if let Some(p) = loose {
            return ApiProblem {
                status,
                title: p.title.unwrap_or(reason),
                code: p.code.unwrap_or_else(|| format!("http_{status}")),
                detail: p.detail,
                errors: p.errors,
                trace_id: p.trace_id,
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        ApiProblem {
            status,
            title: reason,
            code: format!("http_{status}"),
            detail: (!text.is_empty()).then(|| crate::render::truncate(text, 200)),
            errors: Vec::new(),
            trace_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::error::ErrorCode;

    #[test]
    fn problem_bodies() {
        let body = serde_json::to_vec(
            &Problem::new(ErrorCode::Forbidden).with_detail("admin role required"),
        )
        .unwrap();
        let p = ApiProblem::from_response(403, Some("Forbidden"), &body);
        assert_eq!(p.to_string(), "Forbidden (forbidden): admin role required");
        assert_eq!(Error::Api(p).exit_code(), exit::AUTH);

        let p = ApiProblem::from_response(
            409,
            Some("Conflict"),
            br#"{"title":"New thing","code":"brand_new_code"}"#,
        );
        assert_eq!(p.to_string(), "New thing (brand_new_code)");

        let p = ApiProblem::from_response(502, Some("Bad Gateway"), b"<html>oops</html>");
        assert_eq!(p.to_string(), "Bad Gateway (http_502): <html>oops</html>");
        let p = ApiProblem::from_response(404, Some("Not Found"), b"");
        assert_eq!(p.to_string(), "Not Found (http_404)");
        assert_eq!(Error::Api(p).exit_code(), exit::NOT_FOUND);
    }
}
