//! Asking the client's identd on the event loop: the exchange is socks4-server's
//! [`IdentAnswer`], performed with the runtime's own connect, write and read. A client who leaves
//! drops the future (the driver watches it meanwhile), which closes the identd connection at once;
//! a slow identd holds a socket and a timer, never a thread.

use std::net::SocketAddr;
use std::time::Duration;

use socks4_core::Failure;
use socks4_server::ident::{self, IdentAnswer};

use crate::Runtime;
use crate::runtime::{within, write_all};

/// Asks the identd of `client`'s host who owns `client` → `local`, within `timeout` for the
/// whole exchange.
pub(crate) async fn ask<R: Runtime>(
    client: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
) -> Result<IdentAnswer, Failure> {
    let exchange = async {
        let stream = R::connect(ident::identd(client), timeout).await.map_err(|e| Failure::from(&e))?;
        let mut answer = IdentAnswer::new(client, local);
        write_all::<R>(&stream, answer.query()).await.map_err(|e| Failure::from(&e))?;
        while answer.wants_more() {
            match R::read(&stream, answer.unread()).await {
                Ok(0) => break,
                Ok(n) => answer.fill(n),
                Err(e) => return Err(Failure::from(&e)),
            }
        }
        Ok(answer)
    };
    within::<R, _>(timeout, exchange).await.unwrap_or(Err(Failure::TimedOut))
}
