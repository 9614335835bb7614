//! `meshctl` against a stub of the gateway's admin API: the library entry is run with
//! in-memory stdin/stdout/stderr, and the stub records what it was asked.

// Test code: a failed unwrap is a failed test (clippy's test exemption misses helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stub;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use clap::Parser;
use contracts::hospital::DeadLetterPage;
use jiff::Timestamp;
use meshctl::credentials::{self, Credentials};
use meshctl::{Cli, Io, exit};
use serde_json::{Value, json};
use stub::Stub;

struct Run {
    code: u8,
    out: String,
    err: String,
}

struct Harness {
    stub: Stub,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        Harness {
            stub: stub::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir
            .path()
            .join("conf")
            .join("meshctl")
            .join("credentials.json")
    }

    /// Stores credentials as a login would have.
    fn logged_in(&self, access_token: &str, refresh_token: &str) {
        self.stub.state.add_refresh_token(refresh_token);
        self.save_credentials(access_token, refresh_token);
    }

    /// Stores credentials the stub never issued.
    fn save_credentials(&self, access_token: &str, refresh_token: &str) {
        credentials::save(
            &self.config(),
            &Credentials {
                url: self.stub.url.clone(),
                access_token: access_token.to_owned(),
                refresh_token: refresh_token.to_owned(),
                expires_at: Timestamp::now(),
            },
        )
        .unwrap();
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, "", None).await
    }

    async fn run_with(&self, args: &[&str], input: &str, token: Option<&str>) -> Run {
        let config = self.config();
        let mut argv = vec![
            "meshctl",
            "--url",
            &self.stub.url,
            "--config",
            config.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        let mut cli = Cli::try_parse_from(argv).expect("arguments parse");
        // Whatever MESHCTL_TOKEN the developer has set does not belong in the test.
        cli.global.token = token.map(str::to_owned);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut input = input.as_bytes();
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            input: &mut input,
            interactive: false,
            progress: false,
        };
        let code = meshctl::run_with(cli, &mut io).await;
        Run {
            code,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
        }
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn query_pairs(raw: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{raw}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn stored(h: &Harness) -> Credentials {
    credentials::load(&h.config()).unwrap().unwrap()
}

#[tokio::test]
async fn login_stores_a_private_credentials_file() {
    let h = Harness::start().await;
    let run = h
        .run_with(
            &["login", "--email", stub::EMAIL, "--password-stdin"],
            &format!("{}\n", stub::PASSWORD),
            None,
        )
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(
        run.out.contains("as ops@example.com (role admin"),
        "{}",
        run.out
    );
    assert!(run.out.contains(&stub::ACTOR.to_string()), "{}", run.out);

    assert_eq!(mode(&h.config()), 0o600);
    assert_eq!(mode(h.config().parent().unwrap()), 0o700);
    let creds = stored(&h);
    assert_eq!(creds.url, h.stub.url);
    assert!(creds.access_token.starts_with("ey"));
    assert!(creds.refresh_token.starts_with("refresh-"));
    assert!(creds.expires_at > Timestamp::now());

    // The stored session works for admin calls.
    let run = h.run(&["dlq", "list"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
}

#[tokio::test]
async fn login_with_a_wrong_password_is_an_auth_failure() {
    let h = Harness::start().await;
    let run = h
        .run_with(&["login", "--email", stub::EMAIL], "wrong\n", None)
        .await;
    assert_eq!(run.code, exit::AUTH);
    assert!(
        run.err.contains(
            "error: Invalid credentials (invalid_credentials): email or password is wrong"
        ),
        "{}",
        run.err
    );
    assert!(!h.config().exists());
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn login_needs_a_password_and_never_takes_it_as_an_argument() {
    let h = Harness::start().await;
    let run = h
        .run_with(
            &["login", "--email", stub::EMAIL, "--password-stdin"],
            "",
            None,
        )
        .await;
    assert_eq!(run.code, exit::USAGE, "{}", run.err);
    let parsed = Cli::try_parse_from(["meshctl", "login", "--password", "x"]);
    assert!(parsed.is_err());
}

#[tokio::test]
async fn logout_revokes_and_deletes() {
    let h = Harness::start().await;
    h.logged_in(&stub::jwt("admin", 99), "refresh-logout");
    let run = h.run(&["logout"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("logged out of"), "{}", run.out);
    assert!(!h.config().exists());
    assert_eq!(
        *h.stub.state.logouts.lock().unwrap(),
        vec!["refresh-logout".to_owned()]
    );
    let run = h.run(&["logout"]).await;
    assert_eq!(run.code, exit::OK);
    assert!(run.out.contains("not logged in"));
}

#[tokio::test]
async fn list_prints_a_table_and_sends_the_filters() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&[
            "dlq",
            "list",
            "--durable",
            "email-calendar",
            "--kind",
            "permanent",
            "--type",
            "calendar.event_created",
            "--error",
            "550 mailbox",
            "--status",
            "parked",
            "--since",
            "2h",
            "--until",
            "2030-06-01T18:00:00+02:00",
            "--limit",
            "10",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let lines: Vec<&str> = run.out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", run.out);
    for column in [
        "PARKED",
        "DURABLE",
        "TYPE",
        "KIND",
        "DELIVERIES",
        "STATUS",
        "ERROR",
    ] {
        assert!(lines[0].contains(column), "{column}: {}", run.out);
    }
    assert_eq!(lines.len(), 2, "{}", run.out);
    assert!(lines[1].contains(&stub::SMTP_550.to_string()));
    assert!(lines[1].contains("email-calendar"));
    assert!(lines[1].contains("permanent"));
    assert!(lines[1].contains("smtp: 550 mailbox unavailable"));
    assert!(!run.out.contains(&stub::SMTP_TIMEOUT.to_string()));

    // The last request is the one after the refresh: the filters went as the query.
    let raw = h.stub.state.queries_for("messages").pop().unwrap();
    let pairs = query_pairs(&raw);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {raw}"))
    };
    assert_eq!(get("durable"), "email-calendar");
    assert_eq!(get("error_kind"), "permanent");
    assert_eq!(get("message_type"), "calendar.event_created");
    assert_eq!(get("error"), "550 mailbox");
    assert_eq!(get("status"), "parked");
    assert_eq!(get("limit"), "10");
    assert_eq!(get("to"), "2030-06-01T16:00:00Z");
    let from: Timestamp = get("from").parse().unwrap();
    let two_hours_ago = Timestamp::now().as_second() - 7_200;
    assert!((from.as_second() - two_hours_ago).abs() < 60, "{from}");
    assert!(!pairs.iter().any(|(k, _)| k == "cursor" || k == "subject"));
}

#[tokio::test]
async fn list_all_follows_the_cursor_and_json_prints_the_answer() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h.run(&["dlq", "list", "--limit", "1", "--all"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    for id in [stub::SMTP_550, stub::SMTP_TIMEOUT, stub::PUSH_SCHEMA] {
        assert!(run.out.contains(&id.to_string()), "{}", run.out);
    }
    let cursors: Vec<Option<String>> = h
        .stub
        .state
        .queries_for("messages")
        .iter()
        .map(|raw| {
            query_pairs(raw)
                .into_iter()
                .find(|(k, _)| k == "cursor")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(cursors, vec![None, Some("1".into()), Some("2".into())]);

    // One page only: the hint for more goes to stderr, stdout stays the table.
    let run = h.run(&["dlq", "list", "--limit", "1"]).await;
    assert!(run.err.contains("more with --cursor 1"), "{}", run.err);

    let run = h
        .run(&["--json", "dlq", "list", "--durable", "push-calendar"])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let page: DeadLetterPage = serde_json::from_str(&run.out).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, stub::PUSH_SCHEMA);
}

#[tokio::test]
async fn show_prints_diagnosis_headers_body_and_audit() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&["dlq", "show", &stub::SMTP_TIMEOUT.to_string()])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    for text in [
        "diagnosis",
        "email-calendar",
        "CALENDAR #12",
        "transient",
        "smtp: timed out after 30s",
        "Mesh-Message-Id: msg-12",
        "\"email\": \"bad@@example\"",
        "first try",
    ] {
        assert!(run.out.contains(text), "{text}: {}", run.out);
    }
}

#[tokio::test]
async fn missing_things_exit_4() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&["dlq", "show", "0190b6a1-0000-7000-8000-0000000000ff"])
        .await;
    assert_eq!(run.code, exit::NOT_FOUND, "{}", run.err);
    assert!(
        run.err
            .contains("error: Not found (not_found): no such dead letter"),
        "{}",
        run.err
    );
    let run = h.run(&["dlq", "where", "msg-nope"]).await;
    assert_eq!(run.code, exit::NOT_FOUND, "{}", run.err);
}

#[tokio::test]
async fn replay_dry_run_prints_the_matched_count() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&[
            "dlq",
            "replay",
            "--durable",
            "email-calendar",
            "--reason",
            "smtp relay fixed",
            "--dry-run",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(
        run.out.contains("dry run: 2 dead letters match"),
        "{}",
        run.out
    );
    let requests = h.stub.state.bulk_requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![(
            "replay".to_owned(),
            json!({
                "selection": {"filter": {"durable": "email-calendar"}},
                "dry_run": true,
                "rate_per_sec": null,
                "reason": "smtp relay fixed",
            })
        )]
    );
    assert_eq!(h.stub.state.job_polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn replay_waits_for_the_job_and_prints_a_summary() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let ids = [stub::SMTP_550, stub::SMTP_TIMEOUT, stub::PUSH_SCHEMA].map(|i| i.to_string());
    let run = h
        .run(&[
            "dlq", "replay", "--id", &ids[0], "--id", &ids[1], &ids[2], "--reason", "fixed",
            "--rate", "5",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert_eq!(
        run.out.trim(),
        "replayed 3, skipped 0, failed 0 in 0.8 s",
        "{}",
        run.out
    );
    assert_eq!(h.stub.state.job_polls.load(Ordering::SeqCst), 3);
    let (endpoint, body) = h.stub.state.bulk_requests.lock().unwrap()[0].clone();
    assert_eq!(endpoint, "replay");
    assert_eq!(body["selection"]["ids"], json!(ids));
    assert_eq!(body["rate_per_sec"], json!(5));
    assert_eq!(body["dry_run"], json!(false));

    let run = h.run(&["dlq", "jobs"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("completed"), "{}", run.out);
    assert!(run.out.contains("3/3"), "{}", run.out);
}

#[tokio::test]
async fn a_failed_job_fails_the_command() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&[
            "dlq",
            "discard",
            "--group",
            "email-calendar:fp-email-calendar-transient",
            "--reason",
            "make it fail",
        ])
        .await;
    assert_eq!(run.code, exit::OTHER, "{}", run.out);
    assert!(run.err.contains("failed: NATS unavailable"), "{}", run.err);
    let (endpoint, body) = h.stub.state.bulk_requests.lock().unwrap()[0].clone();
    assert_eq!(endpoint, "discard");
    assert_eq!(
        body["selection"],
        json!({"group": {"durable": "email-calendar", "fingerprint": "fp-email-calendar-transient"}})
    );
}

#[tokio::test]
async fn purge_without_waiting_and_json_waiting() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h
        .run(&[
            "dlq",
            "purge",
            "--kind",
            "permanent",
            "--reason",
            "obsolete",
            "--no-wait",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("started purge job"), "{}", run.out);
    assert_eq!(h.stub.state.job_polls.load(Ordering::SeqCst), 0);

    let run = h
        .run(&[
            "--json",
            "dlq",
            "replay",
            "--kind",
            "permanent",
            "--reason",
            "again",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let answer: Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(answer["matched"], json!(2));
    assert_eq!(answer["job"]["status"], json!("completed"));
    assert_eq!(answer["job"]["done"], json!(2));
}

#[tokio::test]
async fn a_bulk_action_needs_a_selection_and_a_reason() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h.run(&["dlq", "replay", "--reason", "all of it"]).await;
    assert_eq!(run.code, exit::USAGE);
    assert!(
        run.err.contains("--id, --group, or filter flags"),
        "{}",
        run.err
    );
    let run = h
        .run(&["dlq", "discard", "--durable", "x", "--reason", "  "])
        .await;
    assert_eq!(run.code, exit::USAGE);
    let run = h
        .run(&["dlq", "purge", "--group", "nofingerprint", "--reason", "r"])
        .await;
    assert_eq!(run.code, exit::USAGE);
    assert_eq!(h.stub.state.admin_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn edit_sends_the_body_of_the_file() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let body = h.dir.path().join("body.json");
    std::fs::write(&body, r#"{"event_id": "e-1", "email": "good@example.com"}"#).unwrap();
    let run = h
        .run(&[
            "dlq",
            "edit",
            &stub::SMTP_550.to_string(),
            "--file",
            body.to_str().unwrap(),
            "--reason",
            "typo in address",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("edited-msg-1"), "{}", run.out);
    assert!(
        run.out.contains("+  \"email\": \"good@example.com\""),
        "{}",
        run.out
    );
    let edits = h.stub.state.edits.lock().unwrap().clone();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].0, stub::SMTP_550);
    assert_eq!(
        edits[0].1.body,
        json!({"event_id": "e-1", "email": "good@example.com"})
    );
    assert_eq!(edits[0].1.reason, "typo in address");

    // Not JSON: a usage error, nothing sent.
    std::fs::write(&body, "{not json").unwrap();
    let run = h
        .run(&[
            "dlq",
            "edit",
            &stub::SMTP_550.to_string(),
            "--file",
            body.to_str().unwrap(),
            "--reason",
            "r",
        ])
        .await;
    assert_eq!(run.code, exit::USAGE, "{}", run.err);
    assert!(run.err.contains("is not valid JSON"), "{}", run.err);
    assert_eq!(h.stub.state.edits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn forbidden_exits_3_with_the_problem() {
    let h = Harness::start().await;
    let run = h
        .run_with(&["dlq", "list"], "", Some(stub::FORBIDDEN))
        .await;
    assert_eq!(run.code, exit::AUTH);
    assert_eq!(
        run.err.lines().next().unwrap(),
        "error: Forbidden (forbidden): admin role required"
    );
    assert!(run.out.is_empty());
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn services_lists_instances_with_their_contract_versions_and_lag() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h.run(&["services"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let calendar_rows: Vec<&str> = run
        .out
        .lines()
        .filter(|l| l.starts_with("calendar"))
        .collect();
    assert_eq!(calendar_rows.len(), 2, "{}", run.out);
    assert!(
        calendar_rows
            .iter()
            .any(|l| l.contains("CALNEW000000") && l.contains("calendar.rsvp_changed@1,2")),
        "{}",
        run.out
    );
    assert!(run.out.contains("PRODUCES"), "{}", run.out);
    assert!(run.out.contains("LAG"), "{}", run.out);
    assert!(
        run.out
            .lines()
            .any(|l| l.starts_with("email-calendar") && l.contains("42")),
        "{}",
        run.out
    );

    let run = h.run(&["services", "--json"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let value: Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(value["instances"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn status_shows_services_lag_dead_letters_and_outboxes() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h.run(&["status"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let line = |prefix: &str| -> Vec<String> {
        run.out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{}", run.out))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // Two calendar instances of one version, one email instance.
    assert_eq!(line("calendar "), ["calendar", "2", "0.1.0"]);
    assert_eq!(line("email "), ["email", "1", "0.1.0"]);
    // Lag, ack pending, dead letters, paused, per durable.
    assert_eq!(
        line("email-calendar"),
        ["email-calendar", "CALENDAR", "42", "3", "2", "no"]
    );
    assert_eq!(line("push-calendar")[5], "yes");
    // Outboxes: an empty one and one with rows waiting for 90 s.
    assert_eq!(line("auth "), ["auth", "0", "-"]);
    let calendar_outbox: Vec<&str> = run
        .out
        .lines()
        .filter(|l| l.starts_with("calendar"))
        .collect();
    assert!(
        calendar_outbox
            .iter()
            .any(|l| l.contains("17") && l.contains("1m ago")),
        "{}",
        run.out
    );
    assert!(run.out.contains("DLQ stream: "), "{}", run.out);
    let status = line("status:").join(" ");
    assert!(status.contains("2 dead letters parked"), "{status}");
    assert!(status.contains("push-calendar is paused"), "{status}");
    assert!(
        status.contains("17 rows wait in the calendar outbox"),
        "{status}"
    );

    let run = h.run(&["status", "--json"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    let value: Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(value["services"]["outboxes"][1]["backlog"], 17);
    assert!(value["dlq"]["dlq_messages"].is_u64(), "{value}");
}

#[tokio::test]
async fn not_logged_in_exits_3_without_a_request() {
    let h = Harness::start().await;
    let run = h.run(&["dlq", "stats"]).await;
    assert_eq!(run.code, exit::AUTH);
    assert!(run.err.contains("not logged in"), "{}", run.err);
    assert_eq!(h.stub.state.admin_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_saved_and_the_request_retried() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let run = h.run(&["dlq", "stats"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("email-calendar"), "{}", run.out);
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(h.stub.state.admin_requests.load(Ordering::SeqCst), 2);
    let creds = stored(&h);
    assert_ne!(creds.access_token, stub::EXPIRED);
    assert_ne!(creds.refresh_token, stub::REFRESH_GOOD);
    assert_eq!(mode(&h.config()), 0o600);

    // The saved pair is used next time: no further refresh.
    let run = h.run(&["dlq", "stats"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refresh_is_tried_only_once() {
    let h = Harness::start().await;
    // The refreshed token is rejected again: no second refresh, no loop.
    h.logged_in(stub::EXPIRED, stub::REFRESH_TO_EXPIRED);
    let run = h.run(&["dlq", "list"]).await;
    assert_eq!(run.code, exit::AUTH, "{}", run.out);
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(h.stub.state.admin_requests.load(Ordering::SeqCst), 2);
    assert!(run.err.contains("meshctl login"), "{}", run.err);

    // A revoked refresh token: the refresh fails, the request is not repeated.
    let h = Harness::start().await;
    h.save_credentials(stub::EXPIRED, "never-issued");
    let run = h.run(&["dlq", "list"]).await;
    assert_eq!(run.code, exit::AUTH, "{}", run.out);
    assert!(run.err.contains("could not be refreshed"), "{}", run.err);
    assert_eq!(h.stub.state.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(h.stub.state.admin_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stored_tokens_are_not_sent_to_another_gateway() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);
    let other = stub::start().await;
    let config = h.config();
    let cli = Cli::try_parse_from([
        "meshctl",
        "--url",
        &other.url,
        "--config",
        config.to_str().unwrap(),
        "dlq",
        "stats",
    ])
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input: &[u8] = b"";
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive: false,
        progress: false,
    };
    let mut cli = cli;
    cli.global.token = None;
    assert_eq!(meshctl::run_with(cli, &mut io).await, exit::AUTH);
    assert_eq!(other.state.admin_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn network_errors_name_the_url() {
    let h = Harness::start().await;
    let config = h.config();
    let cli = Cli::try_parse_from([
        "meshctl",
        "--url",
        "http://127.0.0.1:9",
        "--config",
        config.to_str().unwrap(),
        "dlq",
        "stats",
    ])
    .unwrap();
    let mut cli = cli;
    cli.global.token = Some("anything".into());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input: &[u8] = b"";
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        input: &mut input,
        interactive: false,
        progress: false,
    };
    assert_eq!(meshctl::run_with(cli, &mut io).await, exit::OTHER);
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("GET http://127.0.0.1:9/v1/admin/dlq/stats failed"),
        "{err}"
    );
}

#[tokio::test]
async fn groups_stats_where_audit_and_consumers() {
    let h = Harness::start().await;
    h.logged_in(stub::EXPIRED, stub::REFRESH_GOOD);

    let run = h
        .run(&[
            "dlq",
            "groups",
            "--durable",
            "email-calendar",
            "--status",
            "parked",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(
        run.out.contains("fp-email-calendar-permanent"),
        "{}",
        run.out
    );
    assert!(run.out.contains("1/4"), "{}", run.out);
    assert_eq!(
        h.stub.state.queries_for("groups").pop().unwrap(),
        "durable=email-calendar&status=parked"
    );

    let run = h.run(&["dlq", "stats"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("LAG"), "{}", run.out);
    assert!(run.out.contains("until"), "{}", run.out);
    assert!(
        run.out
            .contains("DLQ stream: 3 messages, 4.00 KiB of 1.00 GiB"),
        "{}",
        run.out
    );

    let run = h.run(&["dlq", "where", "msg-11"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("parked"), "{}", run.out);
    assert!(run.out.contains("handled"), "{}", run.out);
    let run = h.run(&["dlq", "where", "--trace", "trace-11"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert_eq!(
        h.stub.state.queries_for("where"),
        vec!["message_id=msg-11", "trace_id=trace-11"]
    );

    let run = h.run(&["audit", "--limit", "5"]).await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("smtp relay down"), "{}", run.out);
    assert!(run.err.contains("--cursor audit-2"), "{}", run.err);
    assert_eq!(h.stub.state.queries_for("audit").pop().unwrap(), "limit=5");

    let run = h
        .run(&[
            "consumer",
            "pause",
            "email-calendar",
            "--reason",
            "smtp down",
            "--for",
            "30m",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(
        run.out.contains("paused email-calendar until"),
        "{}",
        run.out
    );
    let run = h
        .run(&[
            "consumer",
            "resume",
            "email-calendar",
            "--reason",
            "smtp back",
        ])
        .await;
    assert_eq!(run.code, exit::OK, "{}", run.err);
    assert!(run.out.contains("resumed email-calendar"), "{}", run.out);
    let pauses = h.stub.state.pauses.lock().unwrap().clone();
    assert_eq!(
        pauses,
        vec![
            (
                "email-calendar".to_owned(),
                json!({"seconds": 1800, "reason": "smtp down"})
            ),
            ("email-calendar".to_owned(), json!({"reason": "smtp back"})),
        ]
    );
}

#[tokio::test]
async fn help_and_usage_errors() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = meshctl::run_args(["meshctl", "--help"], &mut out, &mut err).await;
    assert_eq!(code, exit::OK);
    let help = String::from_utf8(out).unwrap();
    for command in ["login", "logout", "dlq", "audit", "consumer"] {
        assert!(help.contains(command), "{help}");
    }

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code =
        meshctl::run_args(["meshctl", "dlq", "show", "not-a-uuid"], &mut out, &mut err).await;
    assert_eq!(code, exit::USAGE);
    assert!(String::from_utf8(err).unwrap().contains("not-a-uuid"));

    for bad in [
        vec!["meshctl", "dlq", "list", "--since", "yesterday"],
        vec!["meshctl", "dlq", "list", "--kind", "fatal"],
        vec![
            "meshctl", "consumer", "pause", "d", "--reason", "r", "--for", "10",
        ],
        vec![
            "meshctl",
            "dlq",
            "edit",
            "0190b6a1-0000-7000-8000-000000000001",
            "--reason",
            "r",
        ],
        vec!["meshctl", "dlq", "where", "m", "--trace", "t"],
    ] {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = meshctl::run_args(bad.clone(), &mut out, &mut err).await;
        assert_eq!(code, exit::USAGE, "{bad:?}");
    }
}
