// tokio-socks (Socks4Stream) as socks4-check --client drives it: PROXY HOST PORT USER PATH TIMEOUT_SECS
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_socks::tcp::socks4::Socks4Stream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (proxy, host, port, user, path) = (a[0].clone(), a[1].clone(), a[2].parse::<u16>().unwrap(), a[3].clone(), a[4].clone());
    let limit = Duration::from_secs_f64(a[5].parse().unwrap());
    let fut = async {
        if user.is_empty() {
            Socks4Stream::connect(proxy.as_str(), (host.as_str(), port)).await
        } else {
            Socks4Stream::connect_with_userid(proxy.as_str(), (host.as_str(), port), &user).await
        }
    };
    let mut s = match tokio::time::timeout(limit, fut).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => { eprintln!("tokio-socks: {e}"); std::process::exit(1) }
        Err(_) => { eprintln!("timed out"); std::process::exit(1) }
    };
    if let Err(e) = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await { eprintln!("{e}"); std::process::exit(1) }
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out).await;
    use std::io::Write;
    std::io::stdout().write_all(&out).unwrap();
    if let Err(e) = r { eprintln!("read: {e}"); std::process::exit(1) }
}
