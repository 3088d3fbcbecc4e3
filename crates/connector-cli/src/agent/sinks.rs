//! Token files the agent keeps (`connector serve --sink NAME=PATH[,…]`), for programs that read a
//! credential from a file: PHP, shell and cron scripts, `curl -H @FILE`.
//!
//! Each file is rewritten atomically (a temporary file in the same directory, synced, renamed
//! over the old one) whenever the connector's token changes — the agent's keep-warm replaces a
//! token at its refresh point, so the file always holds one valid for at least the refresh
//! margin. It is `0600` unless a mode is asked for, and of the agent's group unless one is named.
//! When the connector needs re-authorization, or its token expired without a replacement, the
//! file is removed (a reader finds no file rather than a dead token); it comes back with the next
//! token. A hook command may run after each rotation, once per rotation.

mod file;

use crate::exit::{Exit, Failure};
use catalyst_connectors::{AccessToken, Connection, ExposeSecret as _};
pub use file::write_atomically;
use file::{FileId, file_id, holds_a_token_file};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a sink file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The access token alone, no newline.
    Raw,
    /// `Authorization: Zoho-oauthtoken …` and a newline (for `curl -H @FILE`).
    Header,
    /// `ZOHO_<NAME>_ACCESS_TOKEN=…`, `…_API_DOMAIN=…`, `…_EXPIRES_AT=…` lines (for `source` or a
    /// dotenv loader).
    Env,
    /// `{"access_token", "token_type", "expires_at", "api_domain", "connector"}`.
    Json,
}

/// One `--sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// The connector.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    pub format: Format,
    /// The file's mode (default 0600).
    pub mode: u32,
    /// The file's group (default: the agent's).
    pub group: Option<u32>,
    /// Run with `sh -c` after each rotation.
    pub hook: Option<String>,
}

impl Sink {
    /// Parses `NAME=PATH[,format=raw|header|env|json][,mode=0640][,group=G][,hook=COMMAND]`;
    /// `hook=` comes last and takes the rest (a command may hold commas).
    pub fn parse(
        spec: &str,
        group_id: impl Fn(&str) -> Result<u32, Failure>,
    ) -> Result<Self, Failure> {
        let usage = |problem: String| {
            Failure::new(Exit::Usage, format!("--sink {spec:?}: {problem}")).hint(
                "--sink NAME=PATH[,format=raw|header|env|json][,mode=0640][,group=GROUP][,hook=COMMAND]",
            )
        };
        let (head, hook) = match spec.split_once(",hook=") {
            Some((head, hook)) => (head, Some(hook.to_owned())),
            None => (spec, None),
        };
        let mut parts = head.split(',');
        let (name, path) = parts
            .next()
            .and_then(|p| p.split_once('='))
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| usage("starts with NAME=PATH".into()))?;
        let mut sink = Sink {
            name: name.to_owned(),
            path: PathBuf::from(path),
            format: Format::Raw,
            mode: 0o600,
            group: None,
            hook: hook.filter(|h| !h.trim().is_empty()),
        };
        for option in parts {
            match option.split_once('=') {
                Some(("format", f)) => {
                    sink.format = match f {
                        "raw" => Format::Raw,
                        "header" => Format::Header,
                        "env" => Format::Env,
                        "json" => Format::Json,
                        _ => return Err(usage(format!("unknown format `{f}`"))),
                    }
                }
                Some(("mode", m)) => {
                    sink.mode = u32::from_str_radix(m, 8)
                        .ok()
                        .filter(|m| *m & !0o777 == 0 && *m & 0o600 == 0o600)
                        .ok_or_else(|| {
                            usage(format!("mode `{m}`: octal, at most 0777, at least 0600"))
                        })?;
                }
                Some(("group", g)) => sink.group = Some(group_id(g)?),
                _ => return Err(usage(format!("unknown option `{option}`"))),
            }
        }
        if sink.path.is_relative() {
            return Err(usage(
                "PATH must be absolute (the agent's working directory is /)".into(),
            ));
        }
        Ok(sink)
    }

    /// What the file holds for `token`.
    fn contents(&self, token: &AccessToken) -> String {
        let secret = token.secret().expose_secret();
        let expires_at = unix_secs(token.expires_at());
        match self.format {
            Format::Raw => secret.to_owned(),
            Format::Header => format!("Authorization: {}\n", token.authorization_header()),
            Format::Env => {
                let var = format!("ZOHO_{}", crate::commands::exec::env_name(&self.name));
                format!(
                    "{var}_ACCESS_TOKEN={secret}\n{var}_API_DOMAIN={}\n{var}_EXPIRES_AT={expires_at}\n",
                    token.api_domain().unwrap_or_default()
                )
            }
            Format::Json => format!(
                "{}\n",
                serde_json::json!({
                    "access_token": secret,
                    "token_type": "Zoho-oauthtoken",
                    "expires_at": expires_at,
                    "api_domain": token.api_domain(),
                    "connector": self.name,
                })
            ),
        }
    }

    /// Refuses a path that is not ours to replace: a link, a directory, anything but a file, or a
    /// file that is not a token file (one an earlier run of the agent left, say after a crash, is).
    pub fn check_path(&self) -> Result<(), Failure> {
        let refuse = |what: &str| {
            Failure::new(
                Exit::Usage,
                format!(
                    "--sink {}: {} exists and {what}; the agent replaces and removes only its own token files: move it away or choose another path",
                    self.name,
                    self.path.display()
                ),
            )
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if !meta.file_type().is_file() => {
                Err(refuse("is not a regular file (a link is never followed)"))
            }
            Ok(_) if !holds_a_token_file(&self.path) => Err(refuse("is not a token file")),
            _ => match self.path.parent().map(Path::is_dir) {
                Some(true) => Ok(()),
                _ => Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "--sink {}: the directory of {} does not exist; create it (the agent does not choose its owner and mode for you)",
                        self.name,
                        self.path.display()
                    ),
                )),
            },
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a sink last did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A new token was written (and the hook run).
    Rotated,
    /// The file already holds the connector's token.
    Unchanged,
    /// The file was removed: re-authorization needed, or its token expired.
    Removed,
    /// Nothing to do or nothing possible now (logged).
    Waiting,
}

/// Keeps one sink: each `check` looks at the connector's token (a memory read when it is fresh)
/// and rewrites the file when it changed.
pub struct Keeper {
    sink: Sink,
    /// The token in the file this agent wrote, its expiry and which file it is.
    written: Option<(String, SystemTime, FileId)>,
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    /// The last problem logged: said once, not at every look.
    said: Option<String>,
}

impl Keeper {
    pub fn new(sink: Sink) -> Self {
        Self::with_clock(sink, Arc::new(SystemTime::now))
    }

    /// With the time the expiry of the written token is judged by (tests use a manual clock).
    pub fn with_clock(sink: Sink, now: Arc<dyn Fn() -> SystemTime + Send + Sync>) -> Self {
        Self {
            sink,
            written: None,
            now,
            said: None,
        }
    }

    /// Logs `problem` with `what` unless it was the last thing said.
    fn say(&mut self, problem: String, what: &str) {
        if self.said.as_deref() != Some(problem.as_str()) {
            tracing::warn!(connector = %self.sink.name, path = %self.sink.path.display(), error = %problem, "token file: {what}");
            self.said = Some(problem);
        }
    }

    /// One look.
    pub async fn check(&mut self, connection: &Connection) -> Step {
        let connector = match connection.connector(&self.sink.name) {
            Ok(c) => c,
            Err(e) => {
                self.say(
                    e.to_string(),
                    "no such connector (removed from the config?)",
                );
                return self.remove_expired();
            }
        };
        match connector.access_token().await {
            Ok(token) => {
                self.said = None;
                self.write(&token).await
            }
            Err(e) if e.needs_reauthorization() => {
                self.say(
                    e.to_string(),
                    "removed: the connector needs re-authorization",
                );
                self.remove()
            }
            Err(e) => {
                self.say(
                    e.to_string(),
                    "no new token yet; the current one stays while it is valid",
                );
                self.remove_expired()
            }
        }
    }

    async fn write(&mut self, token: &AccessToken) -> Step {
        let secret = token.secret().expose_secret();
        if self.written.as_ref().is_some_and(|(w, _, _)| w == secret) {
            return Step::Unchanged;
        }
        if !self.may_replace() {
            return Step::Waiting;
        }
        let sink = &self.sink;
        let contents = sink.contents(token);
        let id = match write_atomically(&sink.path, contents.as_bytes(), sink.mode, sink.group) {
            Ok(id) => id,
            Err(e) => {
                self.say(e.to_string(), "cannot write it");
                return Step::Waiting;
            }
        };
        self.written = Some((secret.to_owned(), token.expires_at(), id));
        if let Some(hook) = &self.sink.hook {
            run_hook(hook, &self.sink, token).await;
        }
        Step::Rotated
    }

    /// Whether the file at the path is ours to replace: none, the one this agent wrote last, or
    /// (before its first write) a token file an earlier run left. Anything else — another
    /// program's file put there since — is left untouched, and said.
    fn may_replace(&mut self) -> bool {
        let ours = match std::fs::symlink_metadata(&self.sink.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Ok(meta) => match &self.written {
                Some((_, _, id)) => *id == file_id(&meta),
                None => meta.is_file() && holds_a_token_file(&self.sink.path),
            },
            Err(_) => false,
        };
        if !ours {
            self.say(
                "another file is at its path".to_owned(),
                "left untouched: the agent replaces and removes only its own token files",
            );
        }
        ours
    }

    /// Removes the file when the token in it expired.
    fn remove_expired(&mut self) -> Step {
        match &self.written {
            Some((_, expires_at, _)) if *expires_at <= (self.now)() => self.remove(),
            _ => Step::Waiting,
        }
    }

    /// Removes the file, if it is still the one this agent wrote.
    fn remove(&mut self) -> Step {
        let Some((_, _, id)) = self.written.take() else {
            return Step::Waiting;
        };
        let path = &self.sink.path;
        if std::fs::symlink_metadata(path).is_ok_and(|meta| file_id(&meta) == id) {
            let _ = std::fs::remove_file(path);
            Step::Removed
        } else {
            self.say(
                "another file is at its path".to_owned(),
                "not removed: the agent removes only its own token files",
            );
            Step::Waiting
        }
    }

    /// At exit: the file goes (it would soon hold a dead token), if this agent wrote it.
    pub fn finish(mut self) {
        self.remove();
    }
}

/// Runs `hook` with `sh -c`, the token's path and expiry (never the token) in its environment;
/// waited for, at most a minute.
async fn run_hook(hook: &str, sink: &Sink, token: &AccessToken) {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(hook)
        .env("CONNECTOR_SINK_CONNECTOR", &sink.name)
        .env("CONNECTOR_SINK_PATH", &sink.path)
        .env(
            "CONNECTOR_SINK_EXPIRES_AT",
            unix_secs(token.expires_at()).to_string(),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let outcome = tokio::time::timeout(Duration::from_secs(60), command.status()).await;
    match outcome {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => {
            tracing::warn!(connector = %sink.name, %status, "the token file's hook failed")
        }
        Ok(Err(e)) => {
            tracing::warn!(connector = %sink.name, error = %e, "cannot run the token file's hook")
        }
        Err(_) => {
            tracing::warn!(connector = %sink.name, "the token file's hook ran for a minute: stopped")
        }
    }
}

/// Where the agent's sinks come from: `--sink` flags, and the config's `$connector.sinks` (read
/// again on each reload).
pub struct Sources {
    /// From the command line.
    pub flags: Vec<Sink>,
    /// Resolves a group name (`group=`).
    pub group_id: fn(&str) -> Result<u32, Failure>,
}

impl Sources {
    /// The sinks wanted with `connection`'s config; a config spec that does not parse, or names
    /// no connector, is logged and skipped (at start, `connector serve` refuses it instead).
    fn wanted(&self, connection: &Connection, warned: &mut Vec<String>) -> Vec<Sink> {
        let mut wanted = self.flags.clone();
        for spec in connection.sink_specs() {
            match Sink::parse(spec, self.group_id) {
                Ok(sink) if connection.connector(&sink.name).is_ok() => wanted.push(sink),
                outcome => {
                    if !warned.contains(spec) {
                        let problem = outcome
                            .err()
                            .map_or("no such connector".into(), |f| f.message);
                        tracing::warn!(spec = %spec, problem = %problem, "$connector.sinks: token file skipped");
                        warned.push(spec.clone());
                    }
                }
            }
        }
        // One keeper per file: the first to name it.
        let mut paths = Vec::new();
        wanted.retain(|s| {
            let new = !paths.contains(&s.path);
            paths.push(s.path.clone());
            new
        });
        wanted
    }
}

/// Keeps every sink of the agent until `stop`, looking every `every`; a sink the reloaded config
/// no longer asks for is removed. The files are removed at the end.
pub async fn keep(
    agent: Arc<crate::agent::server::Agent>,
    sources: Sources,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut keepers: Vec<Keeper> = Vec::new();
    let mut warned = Vec::new();
    loop {
        let connection = agent.connection();
        let wanted = sources.wanted(&connection, &mut warned);
        let (kept, gone): (Vec<_>, Vec<_>) =
            keepers.into_iter().partition(|k| wanted.contains(&k.sink));
        gone.into_iter().for_each(Keeper::finish);
        keepers = kept;
        for sink in wanted {
            if !keepers.iter().any(|k| k.sink == sink) {
                keepers.push(Keeper::new(sink));
            }
        }
        for keeper in &mut keepers {
            keeper.check(&connection).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    keepers.into_iter().for_each(Keeper::finish);
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalyst_connectors::{Clock as _, ConnectorConfig, ManualClock, MemoryStore};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn secs(clock: &ManualClock) -> u64 {
        u64::try_from(clock.now_millis() / 1000).unwrap_or(0)
    }

    /// Issue 24's "done when": a reader that opens and reads the file 100,000 times while the
    /// token rotates 1,000 times sees no torn file and no expired token, and the hook runs once
    /// per rotation. Time is a manual clock (the connector's and the emulator's), moved to each
    /// token's refresh point; the agent's keeper is the one `connector serve --sink` runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_see_a_torn_or_expired_token_and_the_hook_runs_once_per_rotation() {
        const ROTATIONS: usize = 1_000;
        const READS: u64 = 100_000;
        let emulator = zoho_emulator::start().await.unwrap();
        emulator.add_client("1000.SINK", "sink-secret");
        let refresh_token = emulator.add_refresh_token("1000.SINK", "ZohoCRM.users.READ");
        let clock = ManualClock::starting_now();
        let connection = Connection::builder()
            .ignore_env()
            .store(MemoryStore::with_clock(Arc::new(clock.clone())))
            .clock(clock.clone())
            .connector(
                ConnectorConfig::builder("crm")
                    .client_id("1000.SINK")
                    .client_secret("sink-secret")
                    .refresh_token(refresh_token)
                    .token_url(emulator.token_url())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.json");
        let hooks = dir.path().join("hooks.log");
        let sink = Sink::parse(
            &format!(
                "crm={},format=json,hook=echo \"$CONNECTOR_SINK_EXPIRES_AT $CONNECTOR_SINK_PATH\" >> {}",
                path.display(),
                hooks.display()
            ),
            |_| unreachable!(),
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        let now = {
            let clock = clock.clone();
            Arc::new(move || catalyst_connectors::millis_to_system_time(clock.now_millis()))
        };
        let mut keeper = Keeper::with_clock(sink, now);
        assert_eq!(keeper.check(&connection).await, Step::Rotated);

        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (done, path, clock) = (done.clone(), path.clone(), clock.clone());
            std::thread::spawn(move || {
                let (mut reads, mut torn, mut expired) = (0_u64, 0_u64, 0_u64);
                let mut seen = std::collections::HashSet::new();
                while !done.load(Ordering::Relaxed) || reads < READS {
                    // The time before the read: whatever token the file held when read was
                    // valid then, so it must outlive this (a reader paused after reading would
                    // otherwise judge an old read by a later clock).
                    let before = secs(&clock);
                    let text = std::fs::read_to_string(&path).unwrap();
                    reads += 1;
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                        torn += 1;
                        continue;
                    };
                    match (v["access_token"].as_str(), v["expires_at"].as_u64()) {
                        (Some(t), Some(at)) if !t.is_empty() => {
                            if at <= before {
                                expired += 1;
                            }
                            seen.insert(t.to_owned());
                        }
                        _ => torn += 1,
                    }
                }
                (reads, torn, expired, seen.len())
            })
        };
        for _ in 0..ROTATIONS {
            // To just past the token's refresh point: the connector serves it (still valid)
            // and replaces it in the background; the keeper writes the replacement.
            let token = connection
                .connector("crm")
                .unwrap()
                .access_token()
                .await
                .unwrap();
            let refresh_at = catalyst_connectors::system_time_to_millis(token.refresh_at());
            let by = Duration::from_millis(u64::try_from(refresh_at - clock.now_millis()).unwrap())
                + Duration::from_secs(1);
            clock.advance(by);
            emulator.advance(by);
            while keeper.check(&connection).await != Step::Rotated {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        done.store(true, Ordering::Relaxed);
        let (reads, torn, expired, distinct) = reader.join().unwrap();
        let hook_runs = std::fs::read_to_string(&hooks).unwrap().lines().count();
        eprintln!("{reads} reads, {distinct} distinct tokens seen, {hook_runs} hook runs");
        assert!(reads >= READS);
        assert_eq!((torn, expired), (0, 0), "torn and expired reads");
        assert_eq!(
            hook_runs,
            ROTATIONS + 1,
            "the hook runs once per token written"
        );
        assert_eq!(
            emulator.stats().token_requests,
            ROTATIONS as u64 + 1,
            "one mint per rotation"
        );
        // Never in another's reach: 0600, and a revoked connector's file goes.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        keeper.finish();
        assert!(!path.exists());
    }

    /// A connector that stays broken is logged once, not at every look (4 a second).
    #[test]
    fn a_problem_is_logged_once_until_it_changes() {
        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let sink = Sink::parse("crm=/run/app/crm.token", |_| Ok(0))
                .unwrap_or_else(|f| panic!("{}", f.message));
            let mut keeper = Keeper::new(sink);
            for problem in [
                "store down",
                "store down",
                "store down",
                "throttled",
                "throttled",
            ] {
                keeper.say(problem.to_owned(), "no new token yet");
            }
            keeper.said = None; // a token was written: the next problem is news again
            keeper.say("store down".to_owned(), "no new token yet");
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 3, "{log}");
    }

    #[test]
    fn specs_parse_and_bad_ones_are_usage_errors() {
        let sink = Sink::parse(
            "crm=/run/app/crm.env,format=env,mode=0640,group=7,hook=systemctl reload php-fpm, now",
            |g| Ok(g.parse().unwrap()),
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(sink.format, Format::Env);
        assert_eq!((sink.mode, sink.group), (0o640, Some(7)));
        assert_eq!(sink.hook.as_deref(), Some("systemctl reload php-fpm, now"));
        for bad in [
            "crm",
            "crm=relative/path",
            "crm=/x,format=xml",
            "crm=/x,mode=0400",
            "crm=/x,mode=1777",
            "crm=/x,owner=root",
        ] {
            let err = Sink::parse(bad, |_| Ok(0)).expect_err(bad);
            assert_eq!(err.exit, Exit::Usage, "{bad}");
        }
    }
}
