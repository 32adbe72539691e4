//! `goldsmith rollout pending|history|retry`.

use super::{say, Ctx};
use crate::cli::RolloutCommand;
use crate::rollout::{self, outbox::DeliveryStatus, DeliverOptions, EventStatus};

pub async fn rollout(ctx: &Ctx, cmd: RolloutCommand) -> anyhow::Result<u8> {
    let store = crate::store::open(&ctx.config)?;
    let store = store.as_ref();
    match cmd {
        RolloutCommand::Pending => {
            let events = rollout::pending(store).await?;
            show(ctx, &events, "no pending rollout events")?;
            Ok(0)
        }
        RolloutCommand::History => {
            let events = rollout::history(store).await?;
            show(ctx, &events, "no rollout events yet")?;
            Ok(0)
        }
        RolloutCommand::Retry => {
            // Validate the inventory and sinks first: a typo should not look like a
            // receiver that is down.
            rollout::inventory::load(&ctx.config)?;
            // A channel that moved while goldsmith died before writing its events gets
            // them now.
            rollout::heads::reconcile_store(&ctx.config, store).await?;
            let out = rollout::deliver_pending(
                &ctx.config,
                store,
                DeliverOptions {
                    include_failed: true,
                },
            )
            .await?;
            let open = out.undelivered().count();
            if ctx.global.json {
                ctx.print_json(&out.deliveries)?;
            } else if out.deliveries.is_empty() {
                say("nothing to deliver\n");
            } else {
                for d in &out.deliveries {
                    say(&format!(
                        "{}  {:<16} {:<12} {}{}\n",
                        short(&d.event_id),
                        d.group,
                        d.sink,
                        d.status.as_str(),
                        d.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
                say(&format!(
                    "{} delivered, {} still owed\n",
                    out.deliveries
                        .iter()
                        .filter(|d| d.status == DeliveryStatus::Delivered)
                        .count(),
                    open
                ));
            }
            Ok(if open == 0 { 0 } else { 1 })
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn show(ctx: &Ctx, events: &[EventStatus], empty: &str) -> anyhow::Result<()> {
    if ctx.global.json {
        return ctx.print_json(&events);
    }
    if events.is_empty() {
        say(&format!("{empty}\n"));
        return Ok(());
    }
    let mut text = String::new();
    for e in events {
        text.push_str(&format!(
            "{}  {}  {:<16} {} {} -> {} on {} ({})\n",
            short(&e.id),
            e.created,
            e.group,
            e.image,
            e.old_version.as_deref().unwrap_or("nothing"),
            e.new_version,
            e.channel,
            e.reason.as_str()
        ));
        for d in &e.deliveries {
            text.push_str(&format!(
                "    {:<12} {:<10} attempts {}{}{}\n",
                d.sink,
                d.status.as_str(),
                d.attempts,
                d.http_status
                    .map(|s| format!(", HTTP {s}"))
                    .unwrap_or_default(),
                d.last_error
                    .as_deref()
                    .filter(|_| d.status != DeliveryStatus::Delivered)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    say(&text);
    Ok(())
}
