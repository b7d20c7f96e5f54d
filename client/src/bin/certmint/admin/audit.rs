//! `certmint admin audit`: read the hash-chained audit log and, with
//! `--verify`, recompute its chain over the events read.
//!
//! Invariants: verification uses the SDK's chain check on exactly the
//! events printed.

use certmint::client::admin::{verify_audit_chain, AdminRequest};
use certmint::wire::AuditEvent;

use super::{time_text, Context, Failure, Listing, PageArgs};
use crate::exit::Exit;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub(super) struct AuditArgs {
    #[command(flatten)]
    page: PageArgs,
    /// Recompute the hash chain of the events read (from seq 1 with --all).
    #[arg(long)]
    verify: bool,
}

pub(super) async fn run(context: &Context, args: AuditArgs) -> Result<Exit, Failure> {
    let listing: Listing<AuditEvent> = context.list(&args.page, AdminRequest::audit).await?;
    context.print_listing(&listing, audit_table)?;
    if args.verify {
        verify_audit_chain(&listing.items)?;
        let anchor = match listing.items.first() {
            Some(first) if first.seq == 1 => "from the genesis hash".to_owned(),
            Some(first) => format!(
                "anchored at seq {}'s prev_hash (use --all to check from the start)",
                first.seq
            ),
            None => "nothing to check".to_owned(),
        };
        let range = match (listing.items.first(), listing.items.last()) {
            (Some(first), Some(last)) => format!(", seq {}..{}", first.seq, last.seq),
            _ => String::new(),
        };
        eprintln!(
            "audit chain verified: {} event(s){range}, {anchor}",
            listing.items.len()
        );
    }
    Ok(Exit::Ok)
}

fn audit_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(&["SEQ", "AT", "KIND", "ACTOR", "SUBJECT", "DATA"]);
    for event in events {
        table.row(vec![
            event.seq.to_string(),
            time_text(event.at),
            event.kind.clone(),
            event.actor.clone(),
            event.subject.clone(),
            event.data.to_string(),
        ]);
    }
    table
}
