//! `connector config check`: report every problem in the config at once, unknown settings too.

use super::Context;
use crate::exit::{Exit, Failure};
use catalyst_connectors::{ConfigIssue, Connection, Error, MemoryStore};

/// Report every problem in the config at once (unknown keys too); exit 3 if there is any.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&["connector config check", "connector config check --config ./connectors.toml"]))]
pub struct Args {
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub fn run(ctx: &Context) -> Result<(), Failure> {
    let path = ctx.config_path()?;
    let built = Connection::builder()
        .file(&path)
        .store(MemoryStore::new())
        .skip_invalid_connectors(true)
        .build();
    let (names, problems): (Vec<String>, Vec<ConfigIssue>) = match built {
        Ok(c) => (
            c.connector_names().map(str::to_owned).collect(),
            c.skipped()
                .flat_map(|(_, issues)| issues.iter().cloned())
                .chain(c.warnings().iter().cloned())
                .collect(),
        ),
        Err(Error::Config(errors)) => (Vec::new(), errors.issues().to_vec()),
        Err(e) => return Err(e.into()),
    };
    if problems.is_empty() {
        println!(
            "{}: ok, {} connector(s): {}",
            path.display(),
            names.len(),
            names.join(", ")
        );
        return Ok(());
    }
    for issue in &problems {
        println!("{issue}");
    }
    Err(Failure::new(
        Exit::Config,
        format!("{} problem(s) in {}", problems.len(), path.display()),
    ))
}
