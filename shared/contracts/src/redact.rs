//! `Debug` that never prints a secret: types carrying passwords and tokens list their
//! fields with [`redacted_debug!`], which prints the secret ones as `<redacted>`. A log
//! line with `?request` or an error that embeds a body then cannot leak them.

/// Prints as `<redacted>`, or `None` / `Some(<redacted>)` through `Option`.
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `redacted_debug!(Type { shown, fields; secret, fields })`.
#[macro_export]
macro_rules! redacted_debug {
    ($ty:ident { $($shown:ident),* ; $($secret:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($secret), &$crate::redact::Shown::of(&self.$secret)))*
                    .finish()
            }
        }
    };
}

/// How a secret field shows: whether it is set, never its value.
pub trait Shown {
    fn of(&self) -> &'static dyn std::fmt::Debug;
}

impl Shown for String {
    fn of(&self) -> &'static dyn std::fmt::Debug {
        &Redacted
    }
}

impl Shown for Option<String> {
    fn of(&self) -> &'static dyn std::fmt::Debug {
        static NONE: Option<()> = None;
        static SOME: Option<Redacted> = Some(Redacted);
        if self.is_some() { &SOME } else { &NONE }
    }
}

#[cfg(test)]
mod tests {
    struct Login {
        email: String,
        password: String,
        token: Option<String>,
        absent: Option<String>,
    }
    redacted_debug!(Login { email; password, token, absent });

    #[test]
    fn secrets_print_as_redacted() {
        let login = Login {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
            token: Some("tok".into()),
            absent: None,
        };
        let text = format!("{login:?}");
        assert_eq!(
            text,
            r#"Login { email: "ada@example.com", password: <redacted>, token: Some(<redacted>), absent: None }"#
        );
    }
}
