//! `certmint admin` (being written).

use crate::exit::Exit;

/// `certmint admin` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> Exit {
    Exit::Failure
}
