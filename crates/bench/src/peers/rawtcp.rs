//! The raw TCP echo peer: read into a 4 KiB buffer, write it all back. No HTTP, no framing, so
//! it shows what this machine's loopback and tokio can do at best (each wake-up echoes whatever
//! arrived in one write, which coalesces naturally).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Size of the per-connection buffer.
const BUFFER: usize = 4096;

/// Echoes bytes until the client goes away.
pub async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
