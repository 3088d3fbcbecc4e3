//! `connector completions SHELL`: print the shell code that completes subcommands, options and
//! connector names. The shell calls `connector` back (with `COMPLETE=<shell>`) for each
//! completion, so names come from the config at the moment you press Tab.

use crate::exit::{Exit, Failure};
use clap_complete::env::Shells;

/// Print the shell code that completes subcommands, options and connector names.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "source <(connector completions bash)      # in ~/.bashrc",
    "connector completions fish > ~/.config/fish/completions/connector.fish",
]))]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    pub(super) shell: String,
    /// The command the shell runs to complete (default: this executable's path); packages give
    /// the installed path, e.g. /usr/bin/connector.
    #[arg(long, value_name = "PATH")]
    pub(super) completer: Option<String>,
}

pub fn run(shell: &str, completer_path: Option<&str>) -> Result<(), Failure> {
    let shells = Shells::builtins();
    let Some(completer) = shells.completer(shell) else {
        let known: Vec<&str> = shells.names().collect();
        return Err(Failure::new(
            Exit::Usage,
            format!("unknown shell `{shell}`; known: {}", known.join(", ")),
        ));
    };
    let exe = completer_path.map(str::to_owned).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "connector".into())
    });
    let mut out = Vec::new();
    completer
        .write_registration("COMPLETE", "connector", "connector", &exe, &mut out)
        .map_err(|e| Failure::new(Exit::Unexpected, format!("cannot write completions: {e}")))?;
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
