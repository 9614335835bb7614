//! `meshctl login` and `meshctl logout`.

use base64::Engine;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose};
use contracts::api::{LoginRequest, LogoutRequest, TokenResponse};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::LoginArgs;
use crate::client::{self, Client, Reply};
use crate::credentials::{self, Credentials};
use crate::error::{Error, Result};
use crate::{Io, print_json, render};

/// The claims shown after a login. Read without verifying the signature: they are for
/// display only, the gateway checks the token on every request.
#[derive(Debug, Default, Deserialize)]
struct ShownClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
}

fn claims(token: &str) -> ShownClaims {
    // JWTs are unpadded base64url; accept padding anyway.
    let engine = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            engine
                .decode(payload)
                .or_else(|_| general_purpose::STANDARD.decode(payload))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub async fn login(
    client: &mut Client,
    args: LoginArgs,
    json: bool,
    io: &mut Io<'_>,
) -> Result<()> {
    let email = match args.email.as_deref().map(str::trim) {
        Some(email) if !email.is_empty() => email.to_owned(),
        _ if io.interactive => prompt_line(io, "email: ")?,
        _ => {
            return Err(Error::Usage(
                "--email is required when stdin is not a terminal".to_owned(),
            ));
        }
    };
    if email.is_empty() {
        return Err(Error::Usage("the email must not be empty".to_owned()));
    }
    let password = if args.password_stdin || !io.interactive {
        read_secret_line(io)?
    } else {
        rpassword::prompt_password("password: ")
            .map_err(|e| Error::Other(format!("cannot read the password: {e}")))?
    };
    if password.is_empty() {
        return Err(Error::Usage("the password must not be empty".to_owned()));
    }

    let url = client.base_url();
    let request = LoginRequest {
        email: email.clone(),
        password,
    };
    let tokens: TokenResponse = client
        .post_public(&url, &["v1", "auth", "login"], &request)
        .await?
        .value;
    let shown = claims(&tokens.access_token);
    let creds = Credentials {
        url: url.clone(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: client::expires_at(tokens.expires_in),
    };
    let expires_at = creds.expires_at;
    client.save_credentials(creds)?;
    let path = client.config_path()?.display().to_string();

    let role = shown.role.clone().unwrap_or_else(|| "unknown".to_owned());
    // Prefer the token's own expiry; fall back to `expires_in`.
    let token_expiry = shown
        .exp
        .and_then(|exp| Timestamp::from_second(exp).ok())
        .unwrap_or(expires_at);
    if json {
        return print_json(
            io,
            &json!({
                "url": url,
                "email": email,
                "user_id": shown.sub,
                "role": role,
                "expires_at": token_expiry.to_string(),
                "credentials": path,
            }),
        );
    }
    writeln!(
        io.out,
        "logged in to {url} as {email} (role {role}, user {})",
        render::or_dash(shown.sub.as_deref())
    )?;
    writeln!(
        io.out,
        "access token expires {}; credentials saved to {path}",
        render::time_ago(token_expiry, Timestamp::now())
    )?;
    if role != "admin" {
        writeln!(
            io.err,
            "note: role `{role}` cannot use the admin commands (the API answers 403)"
        )?;
    }
    Ok(())
}

pub async fn logout(client: &mut Client, json: bool, io: &mut Io<'_>) -> Result<()> {
    let path = client.config_path()?.to_path_buf();
    let Some(creds) = client.stored().cloned() else {
        // An unreadable file holds nothing we could revoke: just remove it.
        let removed = credentials::delete(&path)?;
        let message = if removed {
            "removed unreadable credentials"
        } else {
            "not logged in"
        };
        if json {
            return print_json(io, &json!({ "logged_out": removed, "revoked": false }));
        }
        writeln!(io.out, "{message}")?;
        return Ok(());
    };
    // Revoke where the token was issued, whatever --url says now.
    let revoked: Result<Value> = client
        .post_public(
            &creds.url,
            &["v1", "auth", "logout"],
            &LogoutRequest {
                refresh_token: creds.refresh_token.clone(),
            },
        )
        .await
        .map(|reply: Reply<Value>| reply.raw);
    // Remove the local copy in any case: a secret left on disk is worse than one left
    // unrevoked on a server that expires it.
    credentials::delete(&path)?;
    match revoked {
        Ok(_) => {
            if json {
                return print_json(io, &json!({ "logged_out": true, "revoked": true }));
            }
            writeln!(io.out, "logged out of {}", creds.url)?;
            Ok(())
        }
        Err(Error::Api(p)) if p.status == 401 => {
            if json {
                return print_json(io, &json!({ "logged_out": true, "revoked": false }));
            }
            writeln!(
                io.out,
                "logged out of {} (the session had already ended)",
                creds.url
            )?;
            Ok(())
        }
        Err(e) => Err(Error::Other(format!(
            "credentials removed locally, but revoking the refresh token at {} failed: {e}",
            creds.url
        ))),
    }
}

fn prompt_line(io: &mut Io<'_>, prompt: &str) -> Result<String> {
    write!(io.err, "{prompt}")?;
    io.err.flush()?;
    let mut line = String::new();
    io.input
        .read_line(&mut line)
        .map_err(|e| Error::Other(format!("cannot read stdin: {e}")))?;
    Ok(line.trim().to_owned())
}

/// The first line of the input, without its line ending (other whitespace is kept:
/// it may be part of the password).
fn read_secret_line(io: &mut Io<'_>) -> Result<String> {
    let mut line = String::new();
    let read = io
        .input
        .read_line(&mut line)
        .map_err(|e| Error::Other(format!("cannot read the password from stdin: {e}")))?;
    if read == 0 {
        return Err(Error::Usage(
            "no password on stdin (pipe it in, e.g. `pass show mesh | meshctl login --email … --password-stdin`)"
                .to_owned(),
        ));
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_without_verifying() {
        let payload = general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"sub":"0190b6a1-0000-7000-8000-000000000001","role":"admin","exp":1900000000}"#,
        );
        let shown = claims(&format!("e30.{payload}.sig"));
        assert_eq!(shown.role.as_deref(), Some("admin"));
        assert_eq!(shown.exp, Some(1_900_000_000));
        let nothing = claims("not a token");
        assert!(nothing.role.is_none());
        assert!(claims("a.%%%.c").sub.is_none());
    }
}
