//! `certmint admin audit`: read the hash-chained audit log and, with
//! `--verify`, recompute its chain over the events read.
//!
//! The server pages the log oldest first. People want the latest events,
//! so the table reads the log to its end (in pages of [`READ_PAGE_SIZE`])
//! and shows the newest `--last` (or `--limit`) events (every one with
//! `--all`; one page with `--cursor`), newest first,
//! one readable line each: the event's details are summarised as
//! `key=value` pairs and cut at [`DETAILS_WIDTH`] characters. `--json`
//! prints the server's pages unchanged, in its order, with every field.
//!
//! Invariants: verification uses the SDK's chain check on every event read,
//! in the server's (ascending) order; the order shown never changes what
//! is verified.

use certmint::audit::verify_chain;
use certmint::client::admin::AdminRequest;
use certmint::wire::AuditEvent;
use serde_json::Value;

use super::{time_text, Context, Failure, Listing, PageArgs};
use crate::exit::Exit;
use crate::table::Table;

/// Newest events the table shows without `--last`, `--all` or `--cursor`.
const DEFAULT_LAST: usize = 50;
/// Longest details cell, in characters; `--json` has the rest.
const DETAILS_WIDTH: usize = 72;
/// Page size used when reading the log to its end for the table.
const READ_PAGE_SIZE: u32 = 500;

#[derive(Debug, clap::Args)]
pub(super) struct AuditArgs {
    #[command(flatten)]
    page: PageArgs,
    /// Table: show the newest N events (default 50; --limit N does the same),
    /// reading the log to its end.
    #[arg(long, value_name = "N", conflicts_with_all = ["all", "cursor"])]
    last: Option<usize>,
    /// Recompute the hash chain of the events read (from seq 1 unless --cursor).
    #[arg(long)]
    verify: bool,
}

pub(super) async fn run(context: &Context, args: AuditArgs) -> Result<Exit, Failure> {
    let to_the_end = !context.json && !args.page.all && args.page.cursor.is_none();
    let listing: Listing<AuditEvent> = if to_the_end {
        // Large pages: `--limit` says how many to show, not how to read.
        let every_page = PageArgs {
            limit: Some(READ_PAGE_SIZE),
            cursor: None,
            all: true,
        };
        context.list(&every_page, AdminRequest::audit).await?
    } else {
        context.list(&args.page, AdminRequest::audit).await?
    };
    if context.json {
        context.print_listing(&listing, audit_table)?;
    } else {
        let shown = if to_the_end {
            args.last
                .or(args
                    .page
                    .limit
                    .and_then(|limit| usize::try_from(limit).ok()))
                .unwrap_or(DEFAULT_LAST)
        } else {
            listing.items.len()
        };
        let skip = listing.items.len().saturating_sub(shown);
        print!("{}", audit_table(&listing.items[skip..]).render());
        if skip > 0 {
            eprintln!(
                "(the newest {} of {} events; --last N or --all for more, --json for every field)",
                listing.items.len() - skip,
                listing.items.len()
            );
        }
        if let Some(next) = &listing.next {
            eprintln!("(more results: add --cursor {next}, or --all)");
        }
    }
    if args.verify {
        verify_chain(&listing.items)?;
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

/// `events` (in the server's order) as a table, newest first.
fn audit_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "EVENT", "SUBJECT", "DETAILS"]);
    for event in events.iter().rev() {
        table.row(vec![
            event.seq.to_string(),
            time_text(event.at),
            event.actor.clone(),
            event.kind.clone(),
            event.subject.clone(),
            details(&event.data),
        ]);
    }
    table
}

/// `key=value` pairs of an event's data (nested keys dotted, lists joined
/// by commas), cut at [`DETAILS_WIDTH`] characters with `…`.
fn details(data: &Value) -> String {
    let mut pairs = Vec::new();
    flatten("", data, &mut pairs);
    let text = pairs.join(" ");
    if text.chars().count() <= DETAILS_WIDTH {
        return text;
    }
    let mut cut: String = text.chars().take(DETAILS_WIDTH - 1).collect();
    cut.push('…');
    cut
}

fn flatten(prefix: &str, value: &Value, pairs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, pairs);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        Value::Null => {}
        other if prefix.is_empty() => pairs.push(scalar(other)),
        other => pairs.push(format!("{prefix}={}", scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    fn event(seq: i64, kind: &str, subject: &str, data: Value) -> AuditEvent {
        AuditEvent {
            seq,
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + seq).unwrap(),
            kind: kind.into(),
            actor: "admin:alice".into(),
            subject: subject.into(),
            data,
            prev_hash: "00".repeat(32),
            hash: "11".repeat(32),
        }
    }

    #[test]
    fn ok_table_is_newest_first_with_readable_details() {
        let events = [
            event(1, "policy.created", "web", json!({"version": 1})),
            event(
                2,
                "certificate.issued",
                "0a1b",
                json!({"policy": "web", "names": {"dns": ["a.test", "b.test"], "ip": []}}),
            ),
        ];
        assert_eq!(
            audit_table(&events).render(),
            "SEQ  TIME                  ACTOR        EVENT               SUBJECT  DETAILS\n\
             2    2023-11-14T22:13:22Z  admin:alice  certificate.issued  0a1b     names.dns=a.test,b.test policy=web\n\
             1    2023-11-14T22:13:21Z  admin:alice  policy.created      web      version=1\n"
        );
    }

    #[test]
    fn ok_long_details_are_cut_to_one_short_cell() {
        let data = json!({"reason": "x".repeat(500)});
        let cell = details(&data);
        assert_eq!(cell.chars().count(), DETAILS_WIDTH);
        assert!(
            cell.starts_with("reason=xxx") && cell.ends_with('…'),
            "{cell}"
        );
        assert_eq!(details(&json!({})), "");
        assert_eq!(details(&json!("plain")), "plain");
    }
}
