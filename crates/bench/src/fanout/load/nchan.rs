//! Nchan's side channel: its channel-info answers, which say how many subscribers it counts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::timeout;

use crate::fanout::wire::{self, Kind};
use crate::ws;

/// Nchan: the subscribers its channel-info answers count, over all channels.
pub(super) async fn nchan_subscribers(addr: SocketAddr, channels: usize) -> Result<u64> {
    let mut stream = ws::connect(None, addr).await?;
    let mut total = 0;
    for chunk in (0..channels).collect::<Vec<_>>().chunks(100) {
        let mut request = Vec::new();
        for &c in chunk {
            wire::push_http_request(
                &mut request,
                "GET",
                &format!("/pub/{}", Kind::Nchan.channel(c)),
                "",
            );
        }
        stream.write_all(&request).await?;
        let mut buf = Vec::new();
        let mut answered = 0;
        while answered < chunk.len() {
            let mut tmp = [0u8; 16 * 1024];
            let n = timeout(Duration::from_secs(10), stream.read(&mut tmp))
                .await
                .context("Nchan channel info timed out")??;
            ensure!(n > 0, "Nchan closed the channel-info connection");
            buf.extend_from_slice(&tmp[..n]);
            while let Some((response, used)) = wire::parse_http_response(&buf)? {
                ensure!(
                    response.status == 200,
                    "channel info: status {}",
                    response.status
                );
                total += wire::num_after(response.body, b"\"subscribers\": ")
                    .or_else(|| wire::num_after(response.body, b"\"subscribers\":"))
                    .with_context(|| {
                        format!(
                            "no subscriber count in {}",
                            String::from_utf8_lossy(response.body)
                        )
                    })?;
                answered += 1;
                buf.drain(..used);
            }
        }
    }
    Ok(total)
}
