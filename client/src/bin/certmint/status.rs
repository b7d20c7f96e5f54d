//! `certmint status` (being written).

use crate::exit::Exit;

/// `certmint status` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> Exit {
    Exit::Failure
}
