//! Native TLS (`TLS_CERT_FILE` + `TLS_KEY_FILE`): a node serves `https://` and `wss://`
//! itself with a certificate from a private CA; clients that trust the CA connect,
//! others are refused by their own TLS check, and plain HTTP gets nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::sync::Arc;

use gateway::{Config, TlsFiles};
use testkit::{TEST_KEY, TEST_SECRET, TestCa, spawn_node};

async fn tls_node(ca: &TestCa) -> testkit::TestNode {
    let mut config = Config::for_tests(TEST_SECRET, TEST_KEY);
    config.tls = Some(TlsFiles {
        cert: ca.cert_file(),
        key: ca.key_file(),
    });
    let (bus, inbox) = bus::MemoryHub::new().connect();
    spawn_node(config, Arc::new(bus), inbox).await.unwrap()
}

fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_https_and_an_engine_io_session() {
    let ca = TestCa::new().unwrap();
    let node = tls_node(&ca).await;
    let port = node.addr.port();
    let client = client_trusting(&std::fs::read(ca.ca_file()).unwrap());

    let live = client
        .get(format!("https://localhost:{port}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // The Engine.IO handshake over TLS (what every client does first when polling).
    let open = client
        .get(format!(
            "https://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(open.starts_with("0{\"sid\":"), "{open}");
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_and_plain_http_gets_nothing() {
    let ca = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let node = tls_node(&ca).await;
    let port = node.addr.port();

    let wrong = client_trusting(&std::fs::read(other.ca_file()).unwrap())
        .get(format!("https://localhost:{port}/health/live"))
        .send()
        .await
        .unwrap_err();
    assert!(wrong.is_connect(), "{wrong:?}");

    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health/live")).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // The node still serves clients that trust its CA afterwards.
    let ok = client_trusting(&std::fs::read(ca.ca_file()).unwrap())
        .get(format!("https://localhost:{port}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn an_unusable_key_stops_the_start_with_the_file_named() {
    let ca = TestCa::new().unwrap();
    let mut config = Config::for_tests(TEST_SECRET, TEST_KEY);
    config.tls = Some(TlsFiles {
        cert: ca.cert_file(),
        key: ca.cert_file(),
    });
    let (bus, inbox) = bus::MemoryHub::new().connect();
    let err = spawn_node(config, Arc::new(bus), inbox).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("TLS_KEY_FILE"), "{message}");
    let file = ca.cert_file().display().to_string();
    assert!(message.contains(&file), "{message}");
}
