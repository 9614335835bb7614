//! `meshctl status`: the mesh on one screen — services and their instances with
//! versions, every durable's lag and dead letters, every outbox's backlog, the `DLQ`
//! stream's fill — and a last line that says what needs attention. The same picture as
//! the Grafana dashboard, from `GET /v1/admin/services` and `GET /v1/admin/dlq/stats`.

use std::collections::BTreeMap;

use contracts::hospital::{HospitalStats, ServiceList};
use jiff::Timestamp;
use serde_json::json;

use crate::client::{Client, Reply};
use crate::error::Result;
use crate::{Io, print_json, render};

pub async fn run(client: &mut Client, json: bool, io: &mut Io<'_>) -> Result<()> {
    let services: Reply<ServiceList> = client.get(&["v1", "admin", "services"], &[]).await?;
    let stats: Reply<HospitalStats> = client.get(&["v1", "admin", "dlq", "stats"], &[]).await?;
    if json {
        return print_json(io, &json!({ "services": services.raw, "dlq": stats.raw }));
    }
    write_status(&services.value, &stats.value, Timestamp::now(), io)
}

/// Everything an operator should look at, one phrase each (empty: all is well).
pub fn attention(services: &ServiceList, stats: &HospitalStats) -> Vec<String> {
    let mut notes = Vec::new();
    let parked: u64 = services.consumers.iter().map(|c| c.parked).sum();
    if parked > 0 {
        notes.push(format!("{parked} dead letters parked (meshctl dlq list)"));
    }
    for c in &services.consumers {
        if c.paused {
            notes.push(format!("{} is paused", c.durable));
        }
    }
    for o in &services.outboxes {
        match &o.error {
            Some(error) => notes.push(format!("{} did not report its outbox: {error}", o.service)),
            None if o.backlog > 0 => notes.push(format!(
                "{} rows wait in the {} outbox",
                o.backlog, o.service
            )),
            None => {}
        }
    }
    if stats.dlq_max_bytes > 0
        && stats.dlq_bytes.saturating_mul(10) >= 9 * stats.dlq_max_bytes as u64
    {
        notes.push("the DLQ stream is over 90% full: new parks will be refused".to_owned());
    }
    notes
}

fn write_status(
    services: &ServiceList,
    stats: &HospitalStats,
    now: Timestamp,
    io: &mut Io<'_>,
) -> Result<()> {
    // service → (instances, versions)
    let mut by_service: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
    for i in &services.instances {
        let entry = by_service.entry(&i.service).or_default();
        entry.0 += 1;
        if !entry.1.contains(&i.version.as_str()) {
            entry.1.push(&i.version);
        }
    }
    if by_service.is_empty() {
        writeln!(io.out, "no service instances answered discovery")?;
    } else {
        let mut table = render::table(["SERVICE", "INSTANCES", "VERSIONS"]);
        for (service, (count, versions)) in &by_service {
            table.add_row(vec![
                (*service).to_owned(),
                count.to_string(),
                versions.join(", "),
            ]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }

    writeln!(io.out)?;
    if services.consumers.is_empty() {
        writeln!(io.out, "no consumers")?;
    } else {
        let mut table = render::table([
            "DURABLE",
            "STREAM",
            "LAG",
            "ACK PENDING",
            "DEAD LETTERS",
            "PAUSED",
        ]);
        for c in &services.consumers {
            table.add_row(vec![
                c.durable.clone(),
                c.stream.clone(),
                c.pending.to_string(),
                c.ack_pending.to_string(),
                c.parked.to_string(),
                if c.paused { "yes" } else { "no" }.to_owned(),
            ]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }

    writeln!(io.out)?;
    if services.outboxes.is_empty() {
        writeln!(io.out, "no outboxes reported")?;
    } else {
        let mut table = render::table(["OUTBOX", "BACKLOG", "OLDEST UNPUBLISHED"]);
        for o in &services.outboxes {
            let (backlog, oldest) = match &o.error {
                Some(_) => ("?".to_owned(), "no answer".to_owned()),
                None => (
                    o.backlog.to_string(),
                    o.oldest_unpublished_at
                        .map(|t| render::ago(t, now))
                        .unwrap_or_else(|| "-".to_owned()),
                ),
            };
            table.add_row(vec![o.service.clone(), backlog, oldest]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }

    crate::dlq::write_dlq_usage(stats, io)?;
    let notes = attention(services, stats);
    if notes.is_empty() {
        writeln!(io.out, "status: ok")?;
    } else {
        writeln!(io.out, "status: attention: {}", notes.join("; "))?;
    }
    Ok(())
}
