//! `connector completions SHELL`: print shell completions.

use crate::Cli;
use clap::CommandFactory;

pub fn run(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "connector",
        &mut std::io::stdout(),
    );
}
