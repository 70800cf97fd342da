//! An HTTP GET with hyper-util's legacy `Client` through a SOCKS4 proxy, on
//! [`socks4_tokio::hyper::SocksConnector`] (feature `hyper`); prints the response body to stdout.
//!
//! `hyper_get [--4a] [--timeout SECS] PROXY URL [USER]`: `--4a` sends the URL's host name to the
//! proxy (SOCKS4a) instead of resolving it here; `USER` is the user id (none when absent or
//! empty); `--timeout` (1 s by default) bounds the connection to the proxy and its reply. CI runs
//! it under `socks4-check --client` (.ci/clients.sh), every case but BIND's.
//!
//! ```text
//! cargo run -p socks4-tokio --features hyper --example hyper_get -- --4a 127.0.0.1:1080 http://example.com/ alice
//! ```

use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use socks4_tokio::ProxyAddr;
use socks4_tokio::hyper::SocksConnector;

const USAGE: &str = "usage: hyper_get [--4a] [--timeout SECS] PROXY URL [USER]";

async fn run(args: &[String]) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (mut remote_dns, mut limit, mut rest) = (false, Duration::from_secs(1), Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--4a" => remote_dns = true,
            "--timeout" => limit = Duration::try_from_secs_f64(it.next().ok_or(USAGE)?.parse()?)?,
            _ => rest.push(arg.as_str()),
        }
    }
    let (proxy, url, user) = match rest[..] {
        [proxy, url] => (proxy, url, ""),
        [proxy, url, user] => (proxy, url, user),
        _ => return Err(USAGE.into()),
    };
    let proxy = ProxyAddr::new(proxy.parse::<SocketAddr>()?).with_timeout(limit);
    let connector = SocksConnector::new(proxy).remote_dns(remote_dns).user_id(user);
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let response = client.get(url.parse()?).await?;
    if !response.status().is_success() {
        eprintln!("hyper_get: {}", response.status());
    }
    let mut body = response.into_body();
    let mut out = std::io::stdout().lock();
    // Frame by frame: what arrived is printed even when the transfer fails later.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn Error + Send + Sync>::from)
        .and_then(|rt| rt.block_on(run(&args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The connector's error is the source of hyper-util's "client error (Connect)"; an
            // error that already says its source's text is not followed by it again.
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let text = s.to_string();
                if !msg.contains(&text) {
                    msg = format!("{msg}: {text}");
                }
                source = s.source();
            }
            eprintln!("hyper_get: {msg}");
            ExitCode::FAILURE
        }
    }
}
