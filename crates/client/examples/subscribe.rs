//! Subscribes to a channel, publishes three messages to it, and prints what arrives.
//!
//! Start a server that lets clients publish (`allow_publish = true` under `[channels]`), then:
//! `cargo run -p switchboard-client --example subscribe -- ws://127.0.0.1:8080/connection/websocket news`

use serde_json::json;
use switchboard_client::{Client, Event, Recovery};

#[tokio::main]
async fn main() -> Result<(), switchboard_client::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/connection/websocket".into());
    let channel = args.next().unwrap_or_else(|| "news".into());

    let client = Client::builder(url).name("example").build()?;
    client.connect().await?;
    let mut sub = client.subscribe(channel.as_str()).await?;
    for n in 1..=3 {
        client.publish(&channel, json!({ "n": n })).await?;
    }
    let mut seen = 0;
    while let Some(event) = sub.recv().await {
        match event {
            Event::Publication(p) => {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
                seen += 1;
                if seen == 3 {
                    break;
                }
            }
            Event::Subscribed(s) if s.recovery == Recovery::Lost => {
                eprintln!("publications were missed while away: reload the state")
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(())
}
