//! The README's quick start, done by the official JavaScript client: start the `gateway`
//! binary with no configuration, read the dev token and curl line it prints, connect with
//! `socket.io-client` over WebSocket and over long-polling, and receive the event the
//! printed curl command publishes.
//!
//! Needs Node.js and npm (the CI script installs them); npm packages are installed into
//! `tests/js/node_modules` from the lockfile on first use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the gateway printed that a developer would copy.
struct Printed {
    url: String,
    token: String,
    curl: String,
}

fn start_gateway() -> (Gateway, Printed) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Only the port is chosen, so parallel test runs do not collide on 3000.
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let gateway = Gateway(child);
    let (mut url, mut token, mut curl) = (None, None, None);
    let mut expect_token = false;
    while url.is_none() || token.is_none() || curl.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway prints its banner within 30 s");
        let trimmed = line.trim();
        if expect_token {
            token = Some(trimmed.to_owned());
            expect_token = false;
        } else if trimmed.starts_with("Dev token") {
            expect_token = true;
        } else if trimmed.starts_with("curl ") {
            curl = Some(trimmed.to_owned());
        } else if let Some(rest) = trimmed.split(" listening on ").nth(1) {
            url = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let printed = Printed {
        url: url.unwrap_or_default(),
        token: token.unwrap_or_default(),
        curl: curl.unwrap_or_default(),
    };
    (gateway, printed)
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn npm_ci() {
    if js_dir().join("node_modules/socket.io-client").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(js_dir())
        .status()
        .expect("npm is installed (the CI script installs Node.js)");
    assert!(status.success(), "npm ci failed in {}", js_dir().display());
}

#[test]
fn official_js_client_follows_the_printed_quick_start() {
    npm_ci();
    let (_gateway, printed) = start_gateway();
    assert!(
        printed.url.starts_with("http://127.0.0.1:"),
        "{}",
        printed.url
    );
    assert!(printed.curl.contains("/v1/publish"), "{}", printed.curl);

    for transport in ["websocket", "polling"] {
        let out = Command::new("node")
            .arg("quickstart.mjs")
            .current_dir(js_dir())
            .env("GATEWAY_URL", &printed.url)
            .env("TOKEN", &printed.token)
            .env("CURL", &printed.curl)
            .env("TRANSPORT", transport)
            .output()
            .expect("node is installed");
        assert!(
            out.status.success(),
            "{transport}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(seen["engine_transport"], transport);
        assert_eq!(seen["connected"]["user_id"], "dev");
        assert_eq!(seen["connected"]["tenant_id"], "dev");
        assert!(
            seen["connected"]["node_id"]
                .as_str()
                .is_some_and(|n| n.starts_with("node-"))
        );
        assert!(seen["curl_response"]["id"].is_string());
        assert_eq!(seen["hello"]["text"], "hi from curl");
    }
}

/// The demo page of a no-configuration run: served at `/` with the official client
/// embedded, and its pre-filled token and publish key work.
#[tokio::test]
async fn demo_page_is_served_with_working_dev_credentials() {
    let (_gateway, printed) = start_gateway();
    let get = |path: &str| reqwest::get(format!("{}{path}", printed.url));
    let index = get("/").await.unwrap();
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = index.text().await.unwrap();
    assert!(html.contains(r#"<script src="demo/socket.io.min.js" defer>"#));
    let client = get("/demo/socket.io.min.js")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        client.starts_with("/*!\n * Socket.IO v4."),
        "the official client"
    );
    let config: Value = get("/demo/config.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["path"], "/socket.io/");
    assert_eq!(config["namespaces"], serde_json::json!(["/"]));
    assert!(config["node_id"].as_str().unwrap().starts_with("node-"));

    let token = config["token"].as_str().expect("a dev token");
    let mut socket = testkit::SioClient::connect(
        &printed.url,
        "/",
        Some(serde_json::json!({ "token": token })),
    )
    .await
    .unwrap();
    assert_eq!(
        socket.expect_arg("connected").await.unwrap()["user_id"],
        "dev"
    );
    let key = config["publish_key"].as_str().expect("the generated key");
    let body = r#"{"tenant":"dev","event":"demo","to":["user:dev"],"data":"hi"}"#;
    let (status, _) = testkit::publish(&printed.url, key, body).await.unwrap();
    assert_eq!(status, 202);
    assert_eq!(socket.expect_arg("demo").await.unwrap(), "hi");
}
