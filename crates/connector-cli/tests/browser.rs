//! `connector authorize` end to end in headless Chromium, driven through chromedriver's WebDriver
//! protocol: the browser opens the emulator's consent page, clicks Accept, lands on the CLI's
//! callback; then the stored refresh token must work. Screenshots of both pages are written to
//! `<target>/tmp/authorize-browser/`. When `CI` is set and Chromium is missing, this test fails.

use base64::Engine as _;
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "1000.BROWSER";
const CLIENT_SECRET: &str = "browser-secret";

fn browser_available() -> bool {
    let found = Path::new("/usr/bin/chromium").exists()
        && Command::new("chromedriver")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium/chromedriver missing and CI is set: apt-get install chromium chromium-driver"
        );
        eprintln!("SKIPPED: chromium/chromedriver not installed (set CI to make this a failure)");
    }
    found
}

struct WebDriver {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: std::process::Child,
}

impl WebDriver {
    async fn start(profile: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=900,700", format!("--user-data-dir={}", profile.display())],
        }}}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Self {
            http,
            base,
            session,
            driver,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json::<Value>().await.unwrap()["value"].clone()
    }

    async fn screenshot(&self, to: &Path) {
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(to, bytes).unwrap();
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let emulator = zoho_emulator::start().await.unwrap();
    emulator.add_client(CLIENT_ID, CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("connectors.json");
    std::fs::write(
        &config,
        json!({"crm": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": emulator.token_url(), "refresh_url": emulator.token_url()}})
        .to_string(),
    )
    .unwrap();
    let store = format!("sqlite:{}", dir.path().join("tokens.db").display());
    let connector = |args: &[&str]| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("connector"));
        c.env("CONNECTOR_CONFIG", &config)
            .env("CONNECTOR_STORE", &store)
            .env_remove("CONNECTOR_ENCRYPTION_KEY")
            .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
            .args(args);
        c
    };
    let mut authorize = connector(&[
        "authorize",
        "crm",
        "--scope",
        "ZohoCRM.users.READ",
        "--port",
        "0",
        "--no-browser",
        "--timeout",
        "60",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut consent = String::new();
    std::io::BufReader::new(authorize.stdout.take().unwrap())
        .read_line(&mut consent)
        .unwrap();
    let consent = consent.trim().to_owned();

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("authorize-browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let driver = WebDriver::start(profile.path()).await;
    driver
        .cmd(reqwest::Method::POST, "/url", Some(json!({"url": consent})))
        .await;
    let title = driver.cmd(reqwest::Method::GET, "/title", None).await;
    assert_eq!(title, "Zoho Accounts (emulator): consent");
    driver.screenshot(&out_dir.join("consent.png")).await;
    let accept = driver
        .cmd(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": "#accept"})),
        )
        .await;
    let element = accept
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no Accept button: {accept}"))
        .to_owned();
    driver
        .cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let source = driver.cmd(reqwest::Method::GET, "/source", None).await;
        if source
            .as_str()
            .is_some_and(|s| s.contains("You can close this tab"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the callback page never showed: {source}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let landed = driver.cmd(reqwest::Method::GET, "/url", None).await;
    assert!(
        landed.as_str().unwrap().contains("/callback?code="),
        "{landed}"
    );
    driver.screenshot(&out_dir.join("callback.png")).await;
    let _ = driver.cmd(reqwest::Method::DELETE, "", None).await;
    drop(driver);

    let out = tokio::task::spawn_blocking(move || authorize.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stored refresh token works.
    let out = connector(&["refresh", "crm"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = emulator.stats();
    assert_eq!(stats.by_grant["authorization_code"]["ok"], 1);
    assert_eq!(stats.by_grant["refresh_token"]["ok"], 1);
    eprintln!("screenshots in {}", out_dir.display());
}
