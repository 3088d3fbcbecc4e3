//! Human output: aligned tables, colour only on a terminal and never with `NO_COLOR`.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

/// Whether stderr/stdout may carry colour.
pub fn colour(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn stderr_colour() -> bool {
    colour(std::io::stderr().is_terminal())
}

pub fn stdout_colour() -> bool {
    colour(std::io::stdout().is_terminal())
}

/// Wraps `text` in an SGR colour when `on`.
pub fn paint(text: &str, sgr: &str, on: bool) -> String {
    if on {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Renders rows as an aligned table (the first row is the header, bold when coloured).
pub fn table(rows: &[Vec<String>], colour: bool) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let last = c + 1 == row.len();
            let padded = if last {
                cell.clone()
            } else {
                format!("{cell}{}  ", " ".repeat(widths[c] - cell.chars().count()))
            };
            line.push_str(&padded);
        }
        let line = line.trim_end().to_owned();
        out.push_str(&if i == 0 {
            paint(&line, "1", colour)
        } else {
            line
        });
        out.push('\n');
    }
    out
}

/// "in 43m 12s", "5s ago", "-".
pub fn relative(at: Option<SystemTime>) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(d) => format!("in {}", human(d)),
        Err(e) => format!("{} ago", human(e.duration())),
    }
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &[
                vec!["NAME".into(), "STATE".into()],
                vec!["crm".into(), "fresh".into()],
                vec!["workdrive".into(), "-".into()],
            ],
            false,
        );
        assert_eq!(t, "NAME       STATE\ncrm        fresh\nworkdrive  -\n");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(59)), "59s");
        assert_eq!(human(Duration::from_secs(61)), "1m 01s");
        assert_eq!(human(Duration::from_secs(3725)), "1h 02m");
    }
}

/// A tracing layer that prints the first warning of the process on stderr as one line
/// (`warning: connector `crm`: token store read failed…: <error>`) and drops the rest, which
/// almost always repeat the same cause (a store that is down fails every step).
#[derive(Default)]
pub struct FirstWarning {
    printed: std::sync::atomic::AtomicBool,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FirstWarning {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() > tracing::Level::WARN
            || self
                .printed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = String::new();
        if let Some(c) = &fields.connector {
            line.push_str(&format!("connector `{c}`: "));
        }
        line.push_str(&fields.message);
        if let Some(e) = &fields.error {
            line.push_str(" (");
            line.push_str(e);
            line.push(')');
        }
        eprintln!(
            "{} {}",
            paint("warning:", "33;1", stderr_colour()),
            line.replace('\n', " ")
        );
    }
}

/// The fields of a warning worth one line.
#[derive(Default)]
struct Fields {
    message: String,
    connector: Option<String>,
    error: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "connector" => self.connector = Some(text.trim_matches('"').to_owned()),
            "error" => self.error = Some(text),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "connector" => self.connector = Some(value.to_owned()),
            "error" => self.error = Some(value.to_owned()),
            _ => {}
        }
    }
}
