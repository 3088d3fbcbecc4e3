//! The systemd units in packaging/systemd: what they must say, and `systemd-analyze verify` on
//! them where it is installed (with ExecStart pointing at the binary under test).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// `section.key` → values (a key may repeat), comments and blank lines left out.
fn parse(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry(format!("{section}.{}", key.trim()))
            .or_default()
            .push(value.trim().to_owned());
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    unit.get(key)
        .and_then(|v| v.first())
        .unwrap_or_else(|| panic!("{key} is missing"))
}

/// `systemd-analyze [--user] verify` on `unit` with ExecStart's binary replaced; `None` when
/// systemd-analyze is not installed.
fn verify(unit: &str, binary_in_unit: &str, user: bool) -> Option<std::process::Output> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connector-agent.service");
    std::fs::write(
        &path,
        unit.replace(binary_in_unit, env!("CARGO_BIN_EXE_connector")),
    )
    .unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    match cmd.arg("verify").arg(&path).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("systemd-analyze is not installed: the units were parsed, not verified");
            None
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    }
}

#[test]
fn the_system_unit_runs_the_agent_for_every_user_of_the_clients_group() {
    let text = std::fs::read_to_string(packaging().join("connector-agent.service")).unwrap();
    let unit = parse(&text);
    let exec = one(&unit, "Service.ExecStart");
    assert!(exec.starts_with("/usr/bin/connector serve"), "{exec}");
    assert!(
        exec.contains("--socket /run/catalyst-connectors/agent.sock"),
        "{exec}"
    );
    assert!(exec.contains("--socket-group connector-clients"), "{exec}");
    assert_eq!(one(&unit, "Service.User"), "connector-agent");
    assert_eq!(one(&unit, "Service.Group"), "connector-clients");
    assert_eq!(
        one(&unit, "Service.RuntimeDirectory"),
        "catalyst-connectors"
    );
    assert_eq!(one(&unit, "Service.RuntimeDirectoryMode"), "0750");
    assert!(one(&unit, "Service.LoadCredential").starts_with("encryption-key:"));
    let env = &unit["Service.Environment"];
    assert!(
        env.iter()
            .any(|e| e == "CONNECTOR_ENCRYPTION_KEY_FILE=%d/encryption-key"),
        "{env:?}"
    );
    let prevent = one(&unit, "Service.RestartPreventExitStatus");
    assert!(
        prevent.split(' ').any(|c| c == "3"),
        "configuration errors are not restarted: {prevent}"
    );
    assert_eq!(
        one(&unit, "Service.ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "SIGHUP reloads the config"
    );
    assert_eq!(
        one(&unit, "Service.Type"),
        "notify",
        "ready through sd_notify"
    );
    assert_eq!(one(&unit, "Install.WantedBy"), "multi-user.target");
    let sysusers =
        std::fs::read_to_string(packaging().join("catalyst-connectors.sysusers")).unwrap();
    assert!(sysusers.contains("u connector-agent") && sysusers.contains("g connector-clients"));
    if let Some(out) = verify(&text, "/usr/bin/connector", false) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_user_unit_keeps_running_after_logout_with_linger() {
    let text = std::fs::read_to_string(packaging().join("user/connector-agent.service")).unwrap();
    assert!(
        text.contains("loginctl enable-linger"),
        "the linger step is in the unit's instructions"
    );
    let unit = parse(&text);
    assert_eq!(
        one(&unit, "Service.ExecStart"),
        "%h/.cargo/bin/connector serve"
    );
    assert!(
        unit["Service.Environment"]
            .iter()
            .any(|e| e.starts_with("CONNECTOR_ENCRYPTION_KEY_FILE=")),
        "the agent gets its encryption key"
    );
    assert!(one(&unit, "Service.RestartPreventExitStatus").contains('3'));
    assert_eq!(one(&unit, "Install.WantedBy"), "default.target");
    if let Some(out) = verify(&text, "%h/.cargo/bin/connector", true) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
