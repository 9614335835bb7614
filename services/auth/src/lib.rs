//! The auth bounded context: accounts (email, argon2id password hash, display name,
//! role), login with Ed25519-signed access tokens and rotating refresh tokens, and the
//! JWKS the gateway verifies access tokens with; email verification, password reset and
//! each user's notification preferences (with one-click unsubscribe tokens). It owns its
//! database (users, refresh, verification and reset tokens, preferences, signing keys,
//! outbox) and publishes `UserRegisteredV1`, `PreferencesChangedV1` and
//! `PasswordResetRequestedV1` to the `AUTH` stream through the transactional outbox.
//!
//! API boundary: reached only over NATS request/reply (`svc.auth.v1.*`, see
//! [`handlers::endpoints`]); the gateway does HTTP. Its own HTTP listener serves only
//! `/healthz` and `/readyz`.
//!
//! - [`config`]: [`Config`] from the environment.
//! - [`domain`]: parsed inputs (`Email`, `Password`, `DisplayName`, `Channel`).
//! - [`password`]: argon2id hashing off the async workers.
//! - [`keys`]: the stored signing keys, their rotation, token signing, the JWKS and a
//!   verify helper.
//! - [`throttle`]: brute-force limits on login, per account and per client address.
//! - [`handlers`]: the request/reply endpoints ([`handlers::account`]: verification and
//!   password reset; [`handlers::preferences`]: preferences and unsubscribe).
//! - [`startup`]: [`Application`], which wires it all and drains on shutdown.
//! - [`cli`]: `mesh-auth promote <email>`, `mesh-auth rotate-key`.

// `Problem` (about 130 bytes) is the error half of every reply: it goes straight back to
// the caller, so boxing it would only add allocations and noise.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod config;
pub mod domain;
pub mod handlers;
pub mod keys;
pub mod password;
pub mod startup;
pub mod throttle;

pub use cli::{promote, rotate_key};
pub use config::Config;
pub use startup::{Application, StartupError, migrations};

/// What the `mesh-auth` binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the service.
    Serve,
    /// `promote <email>`: make an existing user an admin.
    Promote(String),
    /// `rotate-key`: make a new signing key the active one.
    RotateKey,
}

const USAGE: &str = "usage: mesh-auth                   run the service
       mesh-auth promote <email>   make an existing user an admin
       mesh-auth rotate-key        sign new tokens with a new key (the old one stays
                                   published until the tokens it signed have expired)";

/// Parses the binary's arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [cmd, email] if cmd == "promote" => Ok(Command::Promote(email.clone())),
        [cmd] if cmd == "rotate-key" => Ok(Command::RotateKey),
        _ => Err(USAGE.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_select_the_command() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_args(&args(&[])), Ok(Command::Serve));
        assert_eq!(
            parse_args(&args(&["promote", "a@b.c"])),
            Ok(Command::Promote("a@b.c".into()))
        );
        assert!(parse_args(&args(&["promote"])).is_err());
        assert_eq!(parse_args(&args(&["rotate-key"])), Ok(Command::RotateKey));
        assert!(parse_args(&args(&["rotate-key", "now"])).is_err());
        assert!(parse_args(&args(&["serve", "x", "y"])).is_err());
    }
}
