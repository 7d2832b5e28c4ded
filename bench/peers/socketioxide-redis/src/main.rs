//! The benchmark contract on socketioxide + socketioxide-redis: namespace `/`, each socket
//! joins the room named in its handshake `auth.room`; on `publish {room, data}` the server
//! emits `msg` with `data` to that room, cluster-wide.
//!
//! Usage: `peer-socketioxide-redis <port> <redis-url>`

use serde::Deserialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

#[derive(Deserialize)]
struct Auth {
    room: String,
}

#[derive(Deserialize)]
struct Publish {
    room: String,
    data: Value,
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>, TryData(auth): TryData<Auth>) {
    if let Ok(auth) = auth {
        // The reference stack: plain socketioxide, not Roomcast's membership.
        #[allow(
            clippy::disallowed_methods,
            reason = "a reference stack, not the gateway"
        )]
        socket.join(auth.room);
    }
    socket.on(
        "publish",
        async |io: SocketIo<A>, Data(p): Data<Publish>| {
            let _ = io.to(p.room).emit("msg", &p.data).await;
        },
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("usage: <port> <redis-url>")?.parse()?;
    let redis_url = args.next().ok_or("usage: <port> <redis-url>")?;
    let client = redis::Client::open(format!("{redis_url}?protocol=resp3"))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect).await?;
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {port}");
    axum::serve(listener, app).await?;
    Ok(())
}
