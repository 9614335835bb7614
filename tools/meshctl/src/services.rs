//! `meshctl services`: which service instances run, which versions and event contract
//! versions they speak, and which consumers lag (`GET /v1/admin/services`, answered by
//! the hospital from NATS service discovery and the durables' state).

use contracts::hospital::{ServiceInstance, ServiceList};

use crate::client::{Client, Reply};
use crate::error::Result;
use crate::{Io, print_json, render};

pub async fn run(client: &mut Client, json: bool, io: &mut Io<'_>) -> Result<()> {
    let reply: Reply<ServiceList> = client.get(&["v1", "admin", "services"], &[]).await?;
    if json {
        return print_json(io, &reply.raw);
    }
    write_list(&reply.value, io)
}

/// `calendar.rsvp_changed@1, calendar.rsvp_changed@2` → `calendar.rsvp_changed@1,2`:
/// versions of one type side by side are what an operator looks for.
pub fn compact(contracts: &[String]) -> String {
    let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in contracts {
        let (ty, version) = c.rsplit_once('@').unwrap_or((c.as_str(), ""));
        match grouped.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, versions)) => versions.push(version),
            None => grouped.push((ty, vec![version])),
        }
    }
    if grouped.is_empty() {
        return "-".to_owned();
    }
    grouped
        .iter()
        .map(|(ty, versions)| format!("{ty}@{}", versions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn short_id(instance: &ServiceInstance) -> String {
    instance.id.chars().take(12).collect()
}

fn write_list(list: &ServiceList, io: &mut Io<'_>) -> Result<()> {
    if list.instances.is_empty() {
        writeln!(io.out, "no service instances answered discovery")?;
    } else {
        let mut table = render::table([
            "SERVICE",
            "VERSION",
            "INSTANCE",
            "ENDPOINTS",
            "PRODUCES",
            "CONSUMES",
        ]);
        for i in &list.instances {
            table.add_row(vec![
                i.service.clone(),
                i.version.clone(),
                short_id(i),
                i.endpoints.to_string(),
                compact(&i.produces),
                compact(&i.consumes),
            ]);
        }
        write!(io.out, "{}", render::table_text(&table))?;
    }
    writeln!(io.out)?;
    if list.consumers.is_empty() {
        writeln!(io.out, "no consumers")?;
        return Ok(());
    }
    let mut table = render::table(["DURABLE", "STREAM", "LAG", "ACK PENDING", "PAUSED"]);
    for c in &list.consumers {
        table.add_row(vec![
            c.durable.clone(),
            c.stream.clone(),
            c.pending.to_string(),
            c.ack_pending.to_string(),
            if c.paused { "yes" } else { "no" }.to_owned(),
        ]);
    }
    write!(io.out, "{}", render::table_text(&table))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_one_type_are_shown_together() {
        let list = [
            "calendar.event_created@1".to_owned(),
            "calendar.rsvp_changed@1".to_owned(),
            "calendar.rsvp_changed@2".to_owned(),
        ];
        assert_eq!(
            compact(&list),
            "calendar.event_created@1 calendar.rsvp_changed@1,2"
        );
        assert_eq!(compact(&[]), "-");
    }
}
