//! The auth context's input types, parsed at the edge: a value of these types is valid
//! by construction, so the rest of the crate never re-checks it.

use contracts::api::{ChannelPreferences, Preferences, RegisterRequest};
use contracts::{ErrorCode, Problem};

/// Longest address SMTP allows (RFC 5321 path limit).
const EMAIL_MAX: usize = 254;
const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 128;
const DISPLAY_NAME_MAX: usize = 100;

/// A trimmed, lowercased address of the shape `local@domain.tld`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, &'static str> {
        let email = normalize_email(raw);
        if email.is_empty() {
            return Err("is required");
        }
        if email.chars().count() > EMAIL_MAX {
            return Err("must be at most 254 characters");
        }
        if !looks_like_email(&email) {
            return Err("must be an email address like name@example.com");
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The form emails are stored and compared in. Login uses it without the shape check,
/// so a malformed address simply matches nobody.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Deliberately loose: one `@`, a non-empty local part, a dotted domain without empty
/// labels, no whitespace. Whether the address exists is for the email service to find out.
fn looks_like_email(email: &str) -> bool {
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

/// A password within the accepted length (counted in characters, not bytes).
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Password, &'static str> {
        let n = raw.chars().count();
        if n < PASSWORD_MIN {
            return Err("must be at least 8 characters");
        }
        if n > PASSWORD_MAX {
            return Err("must be at most 128 characters");
        }
        Ok(Password(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A trimmed, non-empty display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<DisplayName, &'static str> {
        let name = raw.trim();
        let n = name.chars().count();
        if n == 0 {
            return Err("is required");
        }
        if n > DISPLAY_NAME_MAX {
            return Err("must be at most 100 characters");
        }
        Ok(DisplayName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registration whose every field is valid.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub password: Password,
    pub display_name: DisplayName,
}

impl NewUser {
    /// Parses every field and reports all invalid ones at once.
    pub fn parse(request: RegisterRequest) -> Result<NewUser, Problem> {
        let email = Email::parse(&request.email);
        let password = Password::parse(request.password);
        let display_name = DisplayName::parse(&request.display_name);
        match (email, password, display_name) {
            (Ok(email), Ok(password), Ok(display_name)) => Ok(NewUser {
                email,
                password,
                display_name,
            }),
            (email, password, display_name) => {
                let mut problem = Problem::new(ErrorCode::ValidationFailed)
                    .with_detail("the registration has invalid fields");
                for (field, result) in [
                    ("email", email.err()),
                    ("password", password.err()),
                    ("display_name", display_name.err()),
                ] {
                    if let Some(message) = result {
                        problem = problem.with_field(field, message);
                    }
                }
                Err(problem)
            }
        }
    }
}

/// A delivery channel that has its own notification preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Push,
}

impl Channel {
    /// The wire names used in unsubscribe links: `email` or `push`.
    pub fn parse(raw: &str) -> Option<Channel> {
        match raw {
            "email" => Some(Channel::Email),
            "push" => Some(Channel::Push),
            _ => None,
        }
    }

    /// This channel's part of `preferences`.
    pub fn of(self, preferences: &mut Preferences) -> &mut ChannelPreferences {
        match self {
            Channel::Email => &mut preferences.email,
            Channel::Push => &mut preferences.push,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        let e = Email::parse("  Ada.Lovelace@Example.COM ").map(|e| e.0);
        assert_eq!(e, Ok("ada.lovelace@example.com".to_owned()));
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in [
            "",
            "   ",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@example.",
            "ada@.com",
            "ada@@example.com",
            "a@b@c.com",
            "ada lovelace@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
        assert!(Email::parse("x@y.z").is_ok());
    }

    #[test]
    fn password_length_is_counted_in_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("a".repeat(129)).is_err());
    }

    #[test]
    fn display_names_are_trimmed() {
        assert_eq!(
            DisplayName::parse("  Ada ").map(|d| d.0),
            Ok("Ada".to_owned())
        );
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"n".repeat(101)).is_err());
        assert!(DisplayName::parse(&"n".repeat(100)).is_ok());
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let problem = NewUser::parse(RegisterRequest {
            email: "nope".into(),
            password: "short".into(),
            display_name: " ".into(),
        })
        .err()
        .map(|p| {
            (
                p.code,
                p.errors.into_iter().map(|e| e.field).collect::<Vec<_>>(),
            )
        });
        assert_eq!(
            problem,
            Some((
                ErrorCode::ValidationFailed,
                vec!["email".into(), "password".into(), "display_name".into()]
            ))
        );
    }

    #[test]
    fn channels_select_their_part_of_the_preferences() {
        use contracts::api::NotificationKind;
        assert_eq!(Channel::parse("email"), Some(Channel::Email));
        assert_eq!(Channel::parse("push"), Some(Channel::Push));
        assert_eq!(Channel::parse("sms"), None);
        let mut p = Preferences::default();
        Channel::Push
            .of(&mut p)
            .set(NotificationKind::EventChanged, false);
        assert!(!p.push.event_changed);
        assert_eq!(p.email, ChannelPreferences::default());
    }
}
