//! The mail texts: one minijinja template per kind and part (`<name>.txt`, `<name>.html`,
//! the HTML ones extending `base.html`), compiled into the binary from `templates/`.
//!
//! HTML templates escape every value (auto-escape by extension); text templates do not.
//! Templates are parsed once at start, so a broken template stops the service instead of
//! failing mails one by one.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

const SOURCES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("welcome.txt", include_str!("../templates/welcome.txt")),
    ("welcome.html", include_str!("../templates/welcome.html")),
    (
        "password_reset.txt",
        include_str!("../templates/password_reset.txt"),
    ),
    (
        "password_reset.html",
        include_str!("../templates/password_reset.html"),
    ),
    (
        "rsvp_confirmation.txt",
        include_str!("../templates/rsvp_confirmation.txt"),
    ),
    (
        "rsvp_confirmation.html",
        include_str!("../templates/rsvp_confirmation.html"),
    ),
    (
        "rsvp_received.txt",
        include_str!("../templates/rsvp_received.txt"),
    ),
    (
        "rsvp_received.html",
        include_str!("../templates/rsvp_received.html"),
    ),
    (
        "event_updated.txt",
        include_str!("../templates/event_updated.txt"),
    ),
    (
        "event_updated.html",
        include_str!("../templates/event_updated.html"),
    ),
    (
        "event_cancelled.txt",
        include_str!("../templates/event_cancelled.txt"),
    ),
    (
        "event_cancelled.html",
        include_str!("../templates/event_cancelled.html"),
    ),
];

/// The mail templates, by name without extension.
pub const NAMES: &[&str] = &[
    "welcome",
    "password_reset",
    "rsvp_confirmation",
    "rsvp_received",
    "event_updated",
    "event_cancelled",
];

#[derive(Debug, thiserror::Error)]
#[error("template {name}: {source}")]
pub struct TemplateError {
    pub name: String,
    #[source]
    pub source: minijinja::Error,
}

/// A mail's two bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bodies {
    pub text: String,
    pub html: String,
}

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles every template; fails on the first syntax error.
    pub fn new() -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // A misspelt variable is a bug, not an empty string in a customer's mail.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // Block tags on their own line leave no blank lines behind in the text part.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .map_err(|source| TemplateError {
                name: "syntax".to_owned(),
                source,
            })?;
        env.set_syntax(syntax);
        env.set_formatter(format_value);
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .map_err(|source| TemplateError {
                    name: (*name).to_owned(),
                    source,
                })?;
        }
        Ok(Templates { env })
    }

    /// Renders `<name>.txt` and `<name>.html` with the same context.
    pub fn render<C: Serialize>(&self, name: &str, context: &C) -> Result<Bodies, TemplateError> {
        let one = |file: String| -> Result<String, TemplateError> {
            self.env
                .get_template(&file)
                .and_then(|t| t.render(Serde(context)))
                .map_err(|source| TemplateError { name: file, source })
        };
        Ok(Bodies {
            text: one(format!("{name}.txt"))?,
            html: one(format!("{name}.html"))?,
        })
    }
}

/// minijinja's HTML escaping also turns `/` into `&#x2f;`, which is valid but makes
/// every link in a mail unreadable in source form; escape only what HTML needs.
fn format_value(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(text) if matches!(state.auto_escape(), AutoEscape::Html) && !value.is_safe() => out
            .write_str(&html_escape(text))
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Escapes `& < > " '` for HTML text and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Welcome<'a> {
        name: &'a str,
        verify_url: Option<&'a str>,
        base_url: &'a str,
    }

    #[test]
    fn every_template_compiles() {
        let t = Templates::new().unwrap();
        for name in NAMES {
            assert!(t.env.get_template(&format!("{name}.txt")).is_ok(), "{name}");
            assert!(
                t.env.get_template(&format!("{name}.html")).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let t = Templates::new().unwrap();
        let bodies = t
            .render(
                "welcome",
                &Welcome {
                    name: "<Bob & Co>",
                    verify_url: Some("http://x/v1/auth/verify-email?token=a&b"),
                    base_url: "http://x",
                },
            )
            .unwrap();
        assert!(bodies.text.contains("<Bob & Co>"), "{}", bodies.text);
        assert!(
            bodies
                .text
                .contains("http://x/v1/auth/verify-email?token=a&b")
        );
        assert!(
            bodies.html.contains("&lt;Bob &amp; Co&gt;"),
            "{}",
            bodies.html
        );
        assert!(!bodies.html.contains("<Bob"));
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        #[derive(Serialize)]
        struct Nothing {}
        let t = Templates::new().unwrap();
        assert!(t.render("welcome", &Nothing {}).is_err());
    }
}
