//! Engine.IO session ids made by the server's own generator (Roomcast patch).

use socketioxide::SocketIo;

mod fixture;

use fixture::send_req;

#[tokio::test]
async fn handshakes_hand_out_ids_from_the_generator() {
    let counter = std::sync::atomic::AtomicU32::new(0);
    let (svc, io) = SocketIo::builder()
        .engine_sid_generator(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("node7-{n:010}").parse().unwrap()
        })
        .build_svc();
    io.ns("/", async || {});

    for expected in ["node7-0000000000", "node7-0000000001"] {
        let body = send_req(&svc, "transport=polling".into(), http::Method::GET, None).await;
        let open: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(open["sid"], expected);
    }
}
