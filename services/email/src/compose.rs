//! Turning rendered bodies into a MIME message: headers, parts, the invitation.
//!
//! Every mail gets a deterministic `Message-ID` derived from the domain event that
//! caused it, its recipient and its kind: a mail sent twice (the window between the SMTP
//! server's 250 and our record of it) arrives twice with the same id, so duplicates are
//! visible and countable on the receiving side.

use contracts::api::NotificationKind;
use lettre::Message;
use lettre::message::header::{
    ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue,
};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::ics::Method;

/// What a mail is about. Account kinds are always sent; the others follow the
/// recipient's email preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Welcome,
    PasswordReset,
    Notification(NotificationKind),
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::PasswordReset => "password_reset",
            Kind::Notification(k) => k.as_str(),
        }
    }

    /// The preference that governs this kind; `None` for account mails.
    pub fn preference(self) -> Option<NotificationKind> {
        match self {
            Kind::Notification(k) => Some(k),
            Kind::Welcome | Kind::PasswordReset => None,
        }
    }
}

/// `<hex(sha256(source message id, recipient, kind))[..32]@mesh>`. The parts are
/// separated by a byte that cannot occur in any of them, so no two triples collide.
pub fn message_id(source_message_id: &str, recipient: &str, kind: Kind) -> String {
    let mut hash = Sha256::new();
    hash.update(source_message_id.as_bytes());
    hash.update([0x1f]);
    hash.update(recipient.trim().to_ascii_lowercase().as_bytes());
    hash.update([0x1f]);
    hash.update(kind.as_str().as_bytes());
    let digest = hex::encode(hash.finalize());
    format!("<{}@mesh>", &digest[..32])
}

/// `{base}/v1/unsubscribe?token=…&kind=…`, the target of `List-Unsubscribe`.
pub fn unsubscribe_url(base_url: &str, token: &str, kind: Kind) -> String {
    format!(
        "{}/v1/unsubscribe?token={}&kind={}",
        base_url.trim_end_matches('/'),
        percent_encode(token),
        kind.as_str()
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The invitation attached to event mails.
#[derive(Debug, Clone)]
pub struct CalendarPart {
    pub method: Method,
    pub ics: String,
}

/// A fully rendered mail, ready to become a MIME message.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: Kind,
    /// `<…@mesh>`, see [`message_id`].
    pub message_id: String,
    pub to: Mailbox,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub calendar: Option<CalendarPart>,
    /// The one-click unsubscribe link, when the recipient's token is known.
    pub unsubscribe_url: Option<String>,
}

/// `List-Unsubscribe: <url>` (RFC 2369).
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(
            s.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned(),
        ))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// Builds the MIME message: `multipart/alternative` (text, HTML), wrapped in
/// `multipart/mixed` with the `.ics` attachment when there is one.
pub fn build(from: &Mailbox, mail: &Outgoing) -> Result<Message, ComposeError> {
    let mut builder = Message::builder()
        .from(from.clone())
        .to(mail.to.clone())
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()));
    if let Some(url) = &mail.unsubscribe_url {
        builder = builder
            .header(ListUnsubscribe(url.clone()))
            .header(ListUnsubscribePost);
    }
    let alternative = MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(mail.text.clone()),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(mail.html.clone()),
        );
    let message = match &mail.calendar {
        None => builder.multipart(alternative),
        Some(cal) => {
            let text = cal.method.content_type();
            let content_type =
                ContentType::parse(&text).map_err(|_| ComposeError::ContentType(text))?;
            // Base64 keeps the CRLF line ends and folding of the iCalendar text intact
            // through every relay and mail store (7bit/QP text may be re-lined).
            let body = Body::new_with_encoding(cal.ics.clone(), ContentTransferEncoding::Base64)
                .map_err(|_| ComposeError::Encoding)?;
            let attachment = Attachment::new("invite.ics".to_owned()).body(body, content_type);
            builder.multipart(
                MultiPart::mixed()
                    .multipart(alternative)
                    .singlepart(attachment),
            )
        }
    };
    Ok(message?)
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("invalid content type {0:?}")]
    ContentType(String),
    #[error("cannot encode the invitation as base64")]
    Encoding,
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn message_id_is_deterministic_and_distinct_per_part() {
        let a = message_id("0190-aaaa", "ann@example.com", Kind::Welcome);
        assert_eq!(a, message_id("0190-aaaa", "ann@example.com", Kind::Welcome));
        assert_eq!(
            a,
            message_id("0190-aaaa", " Ann@Example.com", Kind::Welcome)
        );
        assert_ne!(a, message_id("0190-aaab", "ann@example.com", Kind::Welcome));
        assert_ne!(a, message_id("0190-aaaa", "bob@example.com", Kind::Welcome));
        assert_ne!(
            a,
            message_id("0190-aaaa", "ann@example.com", Kind::PasswordReset)
        );
        assert!(a.starts_with('<') && a.ends_with("@mesh>"));
        assert_eq!(a.len(), 1 + 32 + "@mesh>".len());
        assert!(a[1..33].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn kinds_have_stable_names_and_preferences() {
        assert_eq!(Kind::Welcome.preference(), None);
        assert_eq!(Kind::PasswordReset.preference(), None);
        let k = Kind::Notification(NotificationKind::RsvpReceived);
        assert_eq!(k.as_str(), "rsvp_received");
        assert_eq!(k.preference(), Some(NotificationKind::RsvpReceived));
    }

    #[test]
    fn unsubscribe_url_encodes_the_token() {
        assert_eq!(
            unsubscribe_url(
                "http://h:8080/",
                "a+b/c=",
                Kind::Notification(NotificationKind::EventChanged)
            ),
            "http://h:8080/v1/unsubscribe?token=a%2Bb%2Fc%3D&kind=event_changed"
        );
    }

    #[test]
    fn a_mail_with_an_invitation_parses_back() {
        let mail = Outgoing {
            kind: Kind::Notification(NotificationKind::RsvpConfirmation),
            message_id: message_id("m1", "ann@example.com", Kind::Welcome),
            to: "Ann Ü <ann@example.com>".parse().unwrap(),
            subject: "You're going: Rust meetup ✓".into(),
            text: "plain text".into(),
            html: "<p>html</p>".into(),
            calendar: Some(CalendarPart {
                method: Method::Request,
                ics: "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n".into(),
            }),
            unsubscribe_url: Some("http://h/v1/unsubscribe?token=t&kind=rsvp_confirmation".into()),
        };
        let from: Mailbox = "Mesh <no-reply@mesh.localhost>".parse().unwrap();
        let raw = build(&from, &mail).unwrap().formatted();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(
            parsed.message_id(),
            Some(mail.message_id.trim_matches(['<', '>']))
        );
        assert_eq!(parsed.subject(), Some("You're going: Rust meetup ✓"));
        assert_eq!(
            parsed.body_text(0).as_deref().map(str::trim),
            Some("plain text")
        );
        assert_eq!(
            parsed.body_html(0).as_deref().map(str::trim),
            Some("<p>html</p>")
        );
        assert_eq!(
            parsed.header_raw("List-Unsubscribe").map(str::trim),
            Some("<http://h/v1/unsubscribe?token=t&kind=rsvp_confirmation>")
        );
        assert_eq!(
            parsed.header_raw("List-Unsubscribe-Post").map(str::trim),
            Some("List-Unsubscribe=One-Click")
        );
        let attachment = parsed.attachments().next().unwrap();
        let ct = attachment.content_type().unwrap();
        assert_eq!(ct.ctype(), "text");
        assert_eq!(ct.subtype(), Some("calendar"));
        assert_eq!(ct.attribute("method"), Some("REQUEST"));
        assert_eq!(attachment.attachment_name(), Some("invite.ics"));
        assert_eq!(
            attachment.contents(),
            b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
        );
    }

    #[test]
    fn account_mails_have_no_unsubscribe_header() {
        let mail = Outgoing {
            kind: Kind::Welcome,
            message_id: message_id("m1", "ann@example.com", Kind::Welcome),
            to: "ann@example.com".parse().unwrap(),
            subject: "Welcome".into(),
            text: "t".into(),
            html: "h".into(),
            calendar: None,
            unsubscribe_url: None,
        };
        let from: Mailbox = "Mesh <no-reply@mesh.localhost>".parse().unwrap();
        let raw = build(&from, &mail).unwrap().formatted();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert!(parsed.header_raw("List-Unsubscribe").is_none());
        assert_eq!(parsed.attachment_count(), 0);
    }
}
