//! `connector exec` as a shell user expects it: exit codes by the shell's conventions, names that
//! would share a variable refused, connectors never authorized not blocking the others, and a
//! child that gets access tokens but nothing that decrypts or mints.

mod common;

use common::{Env, stderr};

async fn exec(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    env.run_with(vars, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_shells_conventions() {
    let env = Env::new().await;
    let code = |out: std::process::Output| out.status.code();
    // The child's own code.
    let out = exec(&env, &[], &["-c", "crm", "--", "sh", "-c", "exit 7"]).await;
    assert_eq!(code(out), Some(7));
    // Not found: 127.
    let out = exec(&env, &[], &["-c", "crm", "--", "no-such-command-here"]).await;
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // Found but not executable: 126.
    let file = env.dir.path().join("not-executable.sh");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    let out = exec(&env, &[], &["-c", "crm", "--", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    // Killed by signal N: 128 + N (SIGTERM: 143).
    let out = exec(&env, &[], &["-c", "crm", "--", "sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(code(out), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_would_share_a_variable_are_refused() {
    let env = Env::new().await;
    let rt = env.refresh_token.clone();
    env.write_config(&[("crm-eu", Some(&rt)), ("crm_eu", Some(&rt))]);
    let out = exec(&env, &[], &["--", "true"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("would both set ZOHO_CRM_EU_ACCESS_TOKEN"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.requests(), 0, "refused before any token was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_c_a_never_authorized_connector_does_not_block_the_others() {
    let env = Env::new().await;
    let rt = env.refresh_token.clone();
    env.write_config(&[("crm", Some(&rt)), ("desk", None)]);
    let script = "test -n \"$ZOHO_CRM_ACCESS_TOKEN\" && test -z \"$ZOHO_DESK_ACCESS_TOKEN\"";
    let out = exec(&env, &[], &["--", "sh", "-c", script]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`desk` is skipped"),
        "{}",
        stderr(&out)
    );
    // Named with -c, it is required.
    let out = exec(&env, &[], &["-c", "crm", "-c", "desk", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_gets_tokens_but_nothing_that_decrypts_or_mints() {
    let env = Env::new().await;
    let key = "0000000000000000000000000000000000000000000000000000000000000001";
    let vars = [
        ("CONNECTOR_ENCRYPTION_KEY", key),
        ("CONNECTOR_CONFIG", "connectors.json"),
    ];
    let script = "test -n \"$ZOHO_CRM_ACCESS_TOKEN\" && test -z \"$CONNECTOR_ENCRYPTION_KEY\" && test -z \"$CONNECTOR_CONFIG\" && test -z \"$CONNECTOR_STORE\"";
    let out = exec(&env, &vars, &["-c", "crm", "--", "sh", "-c", script]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Asked for explicitly, they are passed.
    let script = "test -n \"$CONNECTOR_ENCRYPTION_KEY\" && test -n \"$CONNECTOR_STORE\"";
    let out = exec(
        &env,
        &vars,
        &[
            "-c",
            "crm",
            "--pass-connector-env",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_three_token_lifetimes_always_reads_a_valid_token_from_its_file() {
    let env = Env::new().await;
    // Four-second tokens; the job runs 12 s and calls the API with the file's token every 200 ms.
    env.emulator
        .set_token_lifetime(std::time::Duration::from_secs(4));
    let api = format!("{}/crm/v8/users", env.emulator.url());
    let log = env.dir.path().join("calls.log");
    let script = format!(
        r#"end=$(($(date +%s) + 12)); while [ $(date +%s) -lt $end ]; do
             code=$(curl -s -o /dev/null -w '%{{http_code}}' -H "Authorization: Zoho-oauthtoken $(cat "$ZOHO_CRM_TOKEN_FILE")" {api})
             echo "$code" >> {log}; sleep 0.2; done
           echo "$ZOHO_CRM_TOKEN_FILE" > {log}.path"#,
        log = log.display()
    );
    let out = exec(
        &env,
        &[],
        &["-c", "crm", "--floor", "0s", "--", "sh", "-c", &script],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let calls = std::fs::read_to_string(&log).unwrap();
    let codes: Vec<&str> = calls.lines().collect();
    assert!(codes.len() > 30, "{} calls", codes.len());
    let refused = codes.iter().filter(|c| **c != "200").count();
    assert_eq!(
        refused,
        0,
        "{refused} of {} calls had an expired token",
        codes.len()
    );
    assert!(
        env.requests() >= 3,
        "the file was refreshed: {} mints",
        env.requests()
    );
    // The file is removed with its directory after the job.
    let path = std::fs::read_to_string(format!("{}.path", log.display())).unwrap();
    assert!(
        !std::path::Path::new(path.trim()).exists(),
        "{path} is left behind"
    );
}
