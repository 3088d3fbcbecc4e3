//! `connector socket`: print the agent's default socket path.

use crate::exit::Failure;

/// Print the agent's default socket: where `connector serve` listens without --socket, and what
/// clients connect to without CONNECTOR_AGENT (the same in a login shell and a cron job).
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector socket",
    "S=\"${CONNECTOR_AGENT:-$(connector socket)}\"",
]))]
pub struct Args {}

pub fn run() -> Result<(), Failure> {
    println!("{}", crate::agent::default_socket().display());
    Ok(())
}
