//! `certmint agent` (being written).

use crate::exit::Exit;

/// `certmint agent` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> Exit {
    Exit::Failure
}
