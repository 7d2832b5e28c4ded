//! `gateway` binary: parse configuration, set up logging, bind, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = gateway::Args::parse();
    let config = match gateway::Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    gateway::init_logging(config.log_json);

    let listener = match tokio::net::TcpListener::bind((config.host, config.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return std::process::ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("{}", gateway::banner(&config, addr));
    tracing::info!(node_id = %config.node_id, %addr, bus = %gateway::bus_description(&config), "listening");

    match gateway::run(listener, config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
