//! `meshctl consumer pause|resume`: stop and restart deliveries to a durable consumer
//! (while a downstream is broken, so messages wait in the stream instead of filling the
//! hospital).

use contracts::hospital::{ConsumerState, PauseRequest, ResumeRequest};
use jiff::Timestamp;
use serde_json::Value;

use crate::cli::ConsumerCommand;
use crate::client::{Client, Reply};
use crate::error::{Error, Result};
use crate::{Io, print_json, reason, render};

pub async fn run(
    client: &mut Client,
    cmd: ConsumerCommand,
    json: bool,
    io: &mut Io<'_>,
) -> Result<()> {
    match cmd {
        ConsumerCommand::Pause {
            durable,
            reason: why,
            duration,
        } => {
            let request = PauseRequest {
                seconds: duration.map(|d| d.as_secs()),
                reason: reason(&why)?,
            };
            if request.seconds == Some(0) {
                return Err(Error::Usage("--for must be longer than 0s".to_owned()));
            }
            let reply: Reply<Value> = client
                .post(&["v1", "admin", "consumers", &durable, "pause"], &request)
                .await?;
            if json {
                return print_json(io, &reply.raw);
            }
            // The answer is the consumer's state when the hospital sends it; an empty
            // or other answer still means it worked.
            match serde_json::from_value::<ConsumerState>(reply.raw) {
                Ok(ConsumerState {
                    paused_until: Some(until),
                    ..
                }) => writeln!(
                    io.out,
                    "paused {durable} until {}",
                    render::time_ago(until, Timestamp::now())
                )?,
                _ => match request.seconds {
                    Some(secs) => writeln!(
                        io.out,
                        "paused {durable} for {}",
                        render::short_duration(secs)
                    )?,
                    None => writeln!(io.out, "paused {durable}")?,
                },
            }
            Ok(())
        }
        ConsumerCommand::Resume {
            durable,
            reason: why,
        } => {
            let request = ResumeRequest {
                reason: reason(&why)?,
            };
            let reply: Reply<Value> = client
                .post(&["v1", "admin", "consumers", &durable, "resume"], &request)
                .await?;
            if json {
                return print_json(io, &reply.raw);
            }
            writeln!(io.out, "resumed {durable}")?;
            Ok(())
        }
    }
}
