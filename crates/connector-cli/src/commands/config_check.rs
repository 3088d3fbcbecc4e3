//! `connector config check`: report every problem in the config at once.

use super::Context;
use crate::exit::{Exit, Failure};
use catalyst_connectors::{Connection, Error, MemoryStore};

pub fn run(ctx: &Context) -> Result<(), Failure> {
    let path = ctx.config_path()?;
    match Connection::builder()
        .file(&path)
        .store(MemoryStore::new())
        .build()
    {
        Ok(c) => {
            let names: Vec<&str> = c.connector_names().collect();
            println!(
                "{}: ok, {} connector(s): {}",
                path.display(),
                names.len(),
                names.join(", ")
            );
            Ok(())
        }
        Err(Error::Config(errors)) => {
            for issue in errors.issues() {
                println!("{issue}");
            }
            Err(Failure::new(
                Exit::Config,
                format!("{} problem(s) in {}", errors.issues().len(), path.display()),
            ))
        }
        Err(e) => Err(e.into()),
    }
}
