//! `connector manpages DIR` (hidden, for packagers): writes the man pages generated from the clap
//! definitions — `connector.1` and one `connector-<subcommand>.1` per subcommand.

use crate::exit::{Exit, Failure};
use std::path::{Path, PathBuf};

/// Write the man pages (connector.1, connector-SUBCOMMAND.1) into DIR.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory to write them in (it must exist).
    pub dir: PathBuf,
}

/// Writes the pages of `cli` (the whole command) into `dir`.
pub fn run(cli: clap::Command, dir: &Path) -> Result<(), Failure> {
    let failed = |e: std::io::Error| {
        Failure::new(
            Exit::Unexpected,
            format!("cannot write man pages in {}: {e}", dir.display()),
        )
    };
    let cli = cli.disable_help_subcommand(true);
    let mut pages = vec![("connector".to_owned(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("connector-{}", sub.get_name());
        // The page's title and its synopsis name the full command.
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("connector {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .map_err(failed)?;
        std::fs::write(dir.join(format!("{name}.1")), out).map_err(failed)?;
    }
    Ok(())
}
