//! `meshctl audit`: the ops actions recorded by the hospital.

use contracts::hospital::{AuditEntry, AuditPage};
use jiff::Timestamp;

use crate::cli::AuditArgs;
use crate::client::Client;
use crate::error::Result;
use crate::{Io, print_json, render};

pub async fn run(client: &mut Client, args: AuditArgs, json: bool, io: &mut Io<'_>) -> Result<()> {
    let mut query = Vec::new();
    if let Some(limit) = args.limit {
        query.push(("limit".to_owned(), limit.to_string()));
    }
    if let Some(cursor) = args.cursor {
        query.push(("cursor".to_owned(), cursor));
    }
    let reply = client
        .get::<AuditPage>(&["v1", "admin", "audit"], &query)
        .await?;
    if json {
        return print_json(io, &reply.raw);
    }
    let page = reply.value;
    if page.items.is_empty() {
        writeln!(io.out, "no audit entries")?;
    } else {
        write!(io.out, "{}", table(&page.items))?;
    }
    if let Some(cursor) = page.next_cursor {
        writeln!(io.err, "more: meshctl audit --cursor {cursor}")?;
    }
    Ok(())
}

/// Audit entries as a table (also used by `dlq show`).
pub fn table(entries: &[AuditEntry]) -> String {
    let now = Timestamp::now();
    let mut table = render::table(["AT", "ACTOR", "ACTION", "TARGET", "COUNT", "REASON"]);
    for entry in entries {
        table.add_row(vec![
            format!(
                "{} ({})",
                render::time(entry.at),
                render::ago(entry.at, now)
            ),
            entry.actor.to_string(),
            entry.action.clone(),
            render::truncate(&entry.target, 48),
            entry.count.to_string(),
            render::truncate(&entry.reason, 60),
        ]);
    }
    render::table_text(&table)
}
