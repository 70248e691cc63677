//! `switchboard publish CHANNEL DATA`: through the server API, or as a client with `--as-client`;
//! DATA `-` publishes every line of stdin.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::{ToolError, client, config, reachable};
use crate::cli::PublishArgs;

/// Where publications go.
enum Target {
    /// `POST {url}` with the API key.
    Api {
        http: reqwest::Client,
        url: String,
        key: String,
    },
    /// A WebSocket connection.
    Client(switchboard_client::Client),
}

impl Target {
    async fn new(args: &PublishArgs) -> Result<Self, ToolError> {
        if args.as_client {
            let (client, url) = client(&args.client)?;
            client
                .connect()
                .await
                .map_err(|e| ToolError::from_client(&format!("connect to {url}"), e))?;
            return Ok(Self::Client(client));
        }
        // The configuration is read only for what the flags leave out.
        let loaded = match (&args.api, &args.api_key) {
            (Some(_), Some(_)) => None,
            _ => Some(config(args.client.config.as_deref())?),
        };
        let base = args
            .api
            .as_deref()
            .map(|api| api.trim_end_matches('/').to_owned())
            .or_else(|| {
                loaded
                    .as_ref()
                    .map(|c| format!("http://{}", reachable(c.api.listen)))
            })
            .unwrap_or_default();
        let key = args
            .api_key
            .clone()
            .or_else(|| loaded.as_ref().map(|c| c.api.key.clone()))
            .unwrap_or_default();
        if key.is_empty() {
            return Err(ToolError::Usage(
                "no API key: pass --api-key, set SWITCHBOARD_API__KEY, or name a configuration with [api] key (--config)".into(),
            ));
        }
        if !base.starts_with("http://") {
            return Err(ToolError::Usage(format!(
                "--api {base}: give the server API as http://HOST:PORT (HTTPS is not supported yet)"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ToolError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self::Api {
            http,
            url: format!("{base}/api/publish"),
            key,
        })
    }

    /// Publishes one; the server's result (`{"offset":...,"epoch":...}`).
    async fn publish(&self, channel: &str, data: Value) -> Result<Value, ToolError> {
        match self {
            Self::Client(client) => {
                let pos = client
                    .publish(channel, data)
                    .await
                    .map_err(|e| ToolError::from_client(&format!("publish to {channel}"), e))?;
                Ok(serde_json::json!({"offset": pos.offset, "epoch": pos.epoch}))
            }
            Self::Api { http, url, key } => {
                let body = serde_json::json!({"channel": channel, "data": data}).to_string();
                let response = http
                    .post(url.as_str())
                    .header("authorization", format!("apikey {key}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        ToolError::Usage(format!(
                            "cannot reach the server API at {url}: {e}; check --api"
                        ))
                    })?;
                let status = response.status();
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| ToolError::Usage(format!("reading the answer of {url}: {e}")))?;
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
                }
                let why = match answer.get("error") {
                    Some(e) => format!(
                        "error {}: {}",
                        e.get("code").unwrap_or(&Value::Null),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    ),
                    None => String::from_utf8_lossy(&bytes).trim().to_owned(),
                };
                Err(ToolError::Refused(format!(
                    "the server refused to publish to {channel} (HTTP {status}): {why}"
                )))
            }
        }
    }

    async fn close(self) {
        if let Self::Client(client) = self {
            client.close().await;
        }
    }
}

/// Runs `switchboard publish`.
pub async fn publish(args: PublishArgs) -> Result<(), ToolError> {
    if args.data != "-" {
        let data = parse(&args.data, args.text).map_err(|e| {
            ToolError::Usage(format!(
                "DATA is not JSON ({e}): quote it for the shell, e.g. '{{\"text\":\"hi\"}}' or '\"hi\"', or pass --text"
            ))
        })?;
        let target = Target::new(&args).await?;
        let result = target.publish(&args.channel, data).await;
        target.close().await;
        println!("{}", result?);
        return Ok(());
    }
    let target = Target::new(&args).await?;
    let result = publish_lines(&args, &target).await;
    target.close().await;
    result
}

/// `-`: one publication per line of stdin, in order, until stdin ends.
async fn publish_lines(args: &PublishArgs, target: &Target) -> Result<(), ToolError> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let started = Instant::now();
    let mut last_report = started;
    let mut last_count = 0u64;
    let (mut published, mut skipped, mut number) = (0u64, 0u64, 0u64);
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| ToolError::Usage(format!("reading stdin: {e}")))?
    {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let data = match parse(&line, args.text) {
            Ok(d) => d,
            Err(e) => {
                // One bad line in a long stream should not stop it; the exit code still tells.
                eprintln!(
                    "switchboard: line {number} is not JSON ({e}): skipped (--text publishes lines as strings)"
                );
                skipped += 1;
                continue;
            }
        };
        target.publish(&args.channel, data).await?;
        published += 1;
        // Progress once a second, so a long or endless input (`tail -f`) shows it is moving.
        let now = Instant::now();
        if now.duration_since(last_report) >= Duration::from_secs(1) {
            let rate =
                (published - last_count) as f64 / now.duration_since(last_report).as_secs_f64();
            eprintln!("switchboard: published {published} ({rate:.0}/s)");
            last_report = now;
            last_count = published;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "switchboard: published {published} to {} in {secs:.1}s{}",
        args.channel,
        if skipped > 0 {
            format!(", skipped {skipped} lines that are not JSON")
        } else {
            String::new()
        }
    );
    if skipped > 0 {
        return Err(ToolError::Usage(format!(
            "{skipped} lines were not JSON (use --text to publish lines as strings)"
        )));
    }
    Ok(())
}

/// A publication's data from text: JSON, or with `--text` the text itself as a JSON string.
fn parse(text: &str, as_text: bool) -> Result<Value, serde_json::Error> {
    if as_text {
        Ok(Value::String(text.to_owned()))
    } else {
        serde_json::from_str(text)
    }
}
