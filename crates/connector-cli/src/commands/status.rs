//! `connector status [NAME…]`: token state, schedule, mints and last error of each connector;
//! exits 0 only when every one shown can give a token now (a health check).

use super::{Context, print_json};
use crate::exit::{Exit, Failure};
use crate::output;
use catalyst_connectors::{Connector, ConnectorStatus, TokenSource, TokenState};
use serde_json::json;
use std::time::SystemTime;

/// Show connectors: token state and source, expiry, next refresh, mints, last error.
///
/// Exits 0 only when every connector shown can give a token now; otherwise with the code
/// of the worst problem, so it works as a health check. With CONNECTOR_AGENT set, shows
/// what the running agent sees.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector status",
    "connector status crm --json",
    "connector status crm -q || alert 'crm needs attention'",
]))]
pub struct Args {
    /// Connectors to show (default: all).
    #[arg(value_name = "NAME", add = super::name_candidates())]
    names: Vec<String>,
    /// Print JSON, one object per connector.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let (names, json) = (&args.names, args.json);
    let connection = match ctx.tokens()? {
        super::Tokens::Agent(agent) => {
            let mut report = agent.status().await?;
            if let Some(items) = report.as_array_mut()
                && !names.is_empty()
            {
                items.retain(|i| names.iter().any(|n| i["name"] == n.as_str()));
            }
            return print_report(&report, json);
        }
        super::Tokens::Stores(connection) => connection,
    };
    let selected: Vec<String> = if names.is_empty() {
        connection.connector_names().map(str::to_owned).collect()
    } else {
        names.to_vec()
    };
    let mut rows = vec![header()];
    let mut out = Vec::new();
    let mut worst = Exit::Success;
    for name in &selected {
        let connector = connection.connector(name)?;
        let row = inspect(&connector).await;
        worst = worse(worst, row.verdict);
        out.push(row.json());
        rows.push(row.cells());
    }
    render(&rows, out, json);
    // A store running degraded is said even with -q: it is what status is asked for.
    if let Some(reason) = connection.store_degraded() {
        eprintln!("warning: {reason}");
        worst = worse(worst, Exit::Transient);
    }
    verdict(worst)
}

/// Prints the table or the JSON.
fn render(rows: &[Vec<String>], out: Vec<serde_json::Value>, json: bool) {
    if json {
        print_json(&serde_json::Value::Array(out));
    } else {
        print!("{}", output::table(rows, output::stdout_colour()));
    }
}

/// Ok when every connector can give a token now, else the worst problem's exit code.
fn verdict(worst: Exit) -> Result<(), Failure> {
    match worst {
        Exit::Success => Ok(()),
        exit => Err(Failure::new(
            exit,
            "not every connector can give a token now (see LAST ERROR)",
        )),
    }
}

/// What `connector status --json` shows for `connection` (every connector), and the worst exit.
pub async fn report(connection: &catalyst_connectors::Connection) -> (serde_json::Value, Exit) {
    let mut out = Vec::new();
    let mut worst = Exit::Success;
    for name in connection.connector_names() {
        if let Ok(connector) = connection.connector(name) {
            let row = inspect(&connector).await;
            worst = worse(worst, row.verdict);
            out.push(row.json());
        }
    }
    if connection.store_degraded().is_some() {
        worst = worse(worst, Exit::Transient);
    }
    (serde_json::Value::Array(out), worst)
}

/// Prints a report made elsewhere (by a running agent).
pub fn print_report(report: &serde_json::Value, json: bool) -> Result<(), Failure> {
    let empty = Vec::new();
    let items = report.as_array().unwrap_or(&empty);
    let mut worst = Exit::Success;
    let mut rows = vec![header()];
    for item in items {
        let code = item["exit_code"].as_u64().unwrap_or(1);
        let exit = Exit::ALL
            .into_iter()
            .find(|e| u64::from(e.code()) == code)
            .unwrap_or(Exit::Unexpected);
        worst = worse(worst, exit);
        let text = |k: &str| item[k].as_str().unwrap_or("-").to_owned();
        let when = |k: &str| {
            output::relative(
                item[k]
                    .as_u64()
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
            )
        };
        rows.push(vec![
            text("name"),
            text("state"),
            text("source"),
            when("expires_at"),
            when("refresh_at"),
            format!("{}/{}", item["mints_in_window"], item["mint_limit"]),
            text("last_error"),
        ]);
    }
    render(&rows, items.clone(), json);
    verdict(worst)
}

fn header() -> Vec<String> {
    [
        "NAME",
        "STATE",
        "SOURCE",
        "EXPIRES",
        "NEXT REFRESH",
        "MINTS/10MIN",
        "LAST ERROR",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The more serious of two outcomes: configuration, then re-authorization, then the rest.
pub fn worse(a: Exit, b: Exit) -> Exit {
    let rank = |e: Exit| match e {
        Exit::Success => 0,
        Exit::Transient => 1,
        Exit::Throttled => 2,
        Exit::Unexpected | Exit::Usage => 3,
        Exit::Reauthorize => 4,
        Exit::Config => 5,
    };
    if rank(b) > rank(a) { b } else { a }
}

struct Row {
    name: String,
    status: ConnectorStatus,
    /// The problem shown in LAST ERROR, if any.
    problem: Option<String>,
    /// Exit::Success when the connector can give a token now.
    verdict: Exit,
}

/// What one connector can do now, without minting.
async fn inspect(connector: &Connector) -> Row {
    // Load what the store holds, without minting.
    let cached = connector.cached_token().await;
    let status = connector.status().await;
    // A failure recorded by any process, unless a token was minted after it.
    let recorded = status.recorded_failure.clone().filter(|f| match &cached {
        Ok(Some(t)) => t.issued_at().is_none_or(|at| at < f.at),
        _ => true,
    });
    let (verdict, problem) = match (&cached, &recorded) {
        (Err(e), _) => (Failure::from(e.clone()).exit, Some(e.to_string())),
        (Ok(Some(_)), f) => (Exit::Success, f.as_ref().map(|f| f.message.clone())),
        (Ok(None), Some(f)) if blocks(f) => (Exit::for_kind(f.kind), Some(f.message.clone())),
        (Ok(None), f) if !connector.has_refresh_token().await => (
            Exit::Reauthorize,
            Some(f.as_ref().map(|f| f.message.clone()).unwrap_or_else(|| {
                format!("connector `{}` has no refresh token", connector.name())
            })),
        ),
        (Ok(None), f) => (Exit::Success, f.as_ref().map(|f| f.message.clone())),
    };
    let problem = problem.or_else(|| status.last_error.as_ref().map(|(e, _)| e.to_string()));
    Row {
        name: connector.name().to_owned(),
        status,
        problem,
        verdict,
    }
}

/// Whether a recorded failure stops a connector without a token from getting one now: one that
/// needs a person, or a wait that has not passed.
fn blocks(f: &catalyst_connectors::FailureRecord) -> bool {
    matches!(Exit::for_kind(f.kind), Exit::Config | Exit::Reauthorize)
        || f.next_attempt_at.is_some_and(|t| t > SystemTime::now())
}

impl Row {
    fn state(&self) -> &'static str {
        match self.status.state {
            TokenState::Empty => "none",
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Expired => "expired",
            _ => "?",
        }
    }

    fn source(&self) -> Option<&'static str> {
        match self.status.source {
            Some(TokenSource::Store) => Some("store"),
            Some(TokenSource::Minted) => Some("minted"),
            _ => None,
        }
    }

    fn json(&self) -> serde_json::Value {
        let s = &self.status;
        json!({
            "name": self.name,
            "state": self.state(),
            "source": self.source(),
            "expires_at": s.expires_at.map(output::epoch_secs),
            "refresh_at": s.refresh_at.map(output::epoch_secs),
            "mints_in_window": s.mints_in_window,
            "mint_limit": s.mint_limit,
            "last_error": self.problem,
            "recorded_failure": s.recorded_failure.as_ref().map(|f| json!({
                "code": f.code,
                "message": f.message,
                "at": output::epoch_secs(f.at),
                "consecutive_failures": f.consecutive_failures,
                "next_attempt_at": f.next_attempt_at.map(output::epoch_secs),
            })),
            "healthy": self.verdict == Exit::Success,
            "exit_code": self.verdict.code(),
        })
    }

    fn cells(&self) -> Vec<String> {
        let s = &self.status;
        vec![
            self.name.clone(),
            self.state().into(),
            self.source().unwrap_or("-").into(),
            output::relative(s.expires_at),
            output::relative(s.refresh_at),
            format!("{}/{}", s.mints_in_window, s.mint_limit),
            self.problem.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}
