// hyper-util's SOCKS4 connector (the one behind reqwest's socks4a://) as socks4-check --client drives it:
// PROXY HOST PORT USER PATH TIMEOUT_SECS (the user id is put in the proxy URI's userinfo; it sends none).
use std::time::Duration;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::SocksV4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (proxy, host, port, user, path) = (a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone(), a[4].clone());
    let limit = Duration::from_secs_f64(a[5].parse().unwrap());
    let proxy_uri: http::Uri = if user.is_empty() { format!("socks4a://{proxy}") } else { format!("socks4a://{user}@{proxy}") }.parse().unwrap();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut conn = SocksV4::new(proxy_uri, http).local_dns(false);
    let dst: http::Uri = format!("http://{host}:{port}{path}").parse().unwrap();
    let io = match tokio::time::timeout(limit, conn.call(dst)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => { eprintln!("hyper-util: {e:?}"); std::process::exit(1) }
        Err(_) => { eprintln!("timed out"); std::process::exit(1) }
    };
    let mut s = io.into_inner();
    if let Err(e) = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await { eprintln!("{e}"); std::process::exit(1) }
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out).await;
    use std::io::Write;
    std::io::stdout().write_all(&out).unwrap();
    if let Err(e) = r { eprintln!("read: {e}"); std::process::exit(1) }
}
