//! `connector`: Zoho access tokens for people and scripts.

// The doc comments here are clap's help text, read in a terminal: `<NAME>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]

mod agent;
mod commands;
mod exit;
mod output;

use agent::quick::{Parsed, Quick};
use clap::Parser;
use commands::{Command, Context, Place, with_examples};
use exit::Exit;
use std::process::ExitCode;

/// Valid OAuth access tokens for Zoho services, from Catalyst-style connector configs.
///
/// The first warning of a run (e.g. a token store that cannot be reached) is printed on stderr as
/// one line; -q hides it. CONNECTOR_LOG=warn shows every warning, CONNECTOR_LOG=debug (or any
/// tracing filter, e.g. catalyst_connectors=trace) much more; secrets never appear.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about, long_about, after_help = with_examples(&[
    "connector config check",
    "connector authorize crm --scope ZohoCRM.users.READ",
    "connector token crm",
    "connector status || echo 'a connector needs attention'",
]))]
struct Cli {
    /// Print no warnings, only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Open the config and the stores even when CONNECTOR_AGENT names a running agent.
    #[arg(long, global = true)]
    no_agent: bool,
    /// Also accepted before the subcommand: `connector --config FILE token crm`.
    #[command(flatten)]
    place: Place,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // `connector token`, parsed alone (the full command line is a tenth of a warm run): answered
    // through a running agent with no more start-up than that needs, or run as below.
    let (quiet, no_agent, place, command) = match agent::quick::token() {
        Some(Quick::Answered(done)) => {
            return finish(done.map(|()| ExitCode::from(Exit::Success.code())));
        }
        Some(Quick::Run(token)) => {
            let Parsed {
                quiet,
                no_agent,
                place,
                args,
            } = *token;
            (quiet, no_agent, place, Command::Token(args))
        }
        None => match parse() {
            Ok(cli) => (cli.quiet, cli.no_agent, cli.place, cli.command),
            Err(code) => return code,
        },
    };
    init_logging(quiet);
    let ctx = match Context::new(quiet, no_agent, place, command.place()) {
        Ok(ctx) => ctx,
        Err(f) => return finish(Err(f)),
    };
    // One thread: a command does one thing, and starting worker threads costs more than it
    // saves; the agent serves many clients at once.
    let builder = if command.serves() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Unexpected.code());
        }
    };
    finish(runtime.block_on(command.run(&ctx)))
}

/// The full command line, or the exit code of a run that ended while parsing it: shell
/// completion, `--help`, `--version`, an argument error, `manpages`.
fn parse() -> Result<Cli, ExitCode> {
    // `COMPLETE=bash connector` (see `connector completions`) answers the shell, then exits.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
            return Err(ExitCode::from(exit.code()));
        }
    };
    if let Command::Manpages(args) = &cli.command {
        let cli = <Cli as clap::CommandFactory>::command();
        return Err(match commands::manpages::run(cli, &args.dir) {
            Ok(()) => ExitCode::from(Exit::Success.code()),
            Err(f) => {
                eprintln!("error: {}", f.message);
                ExitCode::from(f.exit.code())
            }
        });
    }
    Ok(cli)
}

/// The exit code of a command, its failure printed on stderr (with its hint).
fn finish(result: Result<ExitCode, exit::Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(f) => {
            let colour = output::stderr_colour();
            eprintln!(
                "{} {}",
                output::paint("error:", "31;1", colour),
                f.message.replace('\n', " ")
            );
            if let Some(hint) = f.hint {
                eprintln!("{} {hint}", output::paint("hint:", "33", colour));
            }
            ExitCode::from(f.exit.code())
        }
    }
}

/// Warnings from the library go to stderr, one line each, without colour unless stderr is a
/// terminal; `-q` hides them; `CONNECTOR_LOG` (a tracing filter, e.g. `debug`) overrides both.
fn init_logging(quiet: bool) {
    let default = if quiet {
        "off"
    } else {
        "catalyst_connectors=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    if std::env::var_os("CONNECTOR_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(output::stderr_colour())
            .with_target(false)
            .without_time()
            .compact()
            .init();
    } else {
        // By default: the first warning only, as one line; the rest would repeat its cause.
        tracing_subscriber::registry()
            .with(filter)
            .with(output::FirstWarning::default())
            .init();
    }
}
