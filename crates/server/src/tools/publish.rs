//! `switchboard publish CHANNEL DATA`: through the server API, or as a client with `--as-client`;
//! DATA `-` publishes every line of stdin.
//!
//! A publish that timed out, or failed temporarily, has an unknown outcome: Redis may apply it after
//! the server gave up waiting. So each publication gets an idempotency key (random, or from
//! `--idempotency-key`) made once, and every attempt (`--attempts`) carries it: the server applies it
//! at most once.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::{ToolError, client_builder, config, reachable};
use crate::cli::PublishArgs;

/// Where publications go.
enum Target {
    /// `POST {url}` with the API key.
    Api {
        http: reqwest::Client,
        url: String,
        key: String,
        attempts: u32,
    },
    /// A WebSocket connection.
    Client(switchboard_client::Client),
}

impl Target {
    async fn new(args: &PublishArgs) -> Result<Self, ToolError> {
        if args.as_client {
            let (builder, url) = client_builder(&args.client)?;
            let client = builder
                .timeout(args.timeout)
                .publish_attempts(args.attempts)
                .build()
                .map_err(|e| ToolError::Usage(e.to_string()))?;
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
            .timeout(args.timeout)
            .build()
            .map_err(|e| ToolError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self::Api {
            http,
            url: format!("{base}/api/publish"),
            key,
            attempts: args.attempts,
        })
    }

    /// Publishes one with idempotency key `key`, trying again while the outcome is unknown; the
    /// server's result (`{"offset":...,"epoch":...}`).
    async fn publish(&self, channel: &str, data: Value, key: &str) -> Result<Value, ToolError> {
        match self {
            Self::Client(client) => {
                // The client tries again itself, with this key.
                let pos = client
                    .publish_with_key(channel, data, key)
                    .await
                    .map_err(|e| ToolError::from_client(&format!("publish to {channel}"), e))?;
                Ok(serde_json::json!({"offset": pos.offset, "epoch": pos.epoch}))
            }
            Self::Api {
                http,
                url,
                key: api_key,
                attempts,
            } => {
                let body =
                    serde_json::json!({"channel": channel, "data": data, "idempotency_key": key})
                        .to_string();
                let mut delay = RETRY_MIN;
                let mut attempt = 1;
                loop {
                    match api_publish(http, url, api_key, channel, &body).await {
                        Err(Attempt::Unknown(why)) if attempt < *attempts => {
                            eprintln!(
                                "switchboard: attempt {attempt} of {attempts} to publish to {channel}: {why}; trying again with the same idempotency key in {delay:?}"
                            );
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(RETRY_MAX);
                            attempt += 1;
                        }
                        Err(Attempt::Unknown(why)) => {
                            return Err(ToolError::Usage(format!(
                                "publishing to {channel} failed {attempts} times, the last: {why}; the outcome is unknown (run it again with --idempotency-key {key} to be sure it is applied once)"
                            )));
                        }
                        Err(Attempt::Refused(e)) => return Err(e),
                        Ok(result) => return Ok(result),
                    }
                }
            }
        }
    }

    async fn close(self) {
        if let Self::Client(client) = self {
            client.close().await;
        }
    }
}

/// The first wait between two attempts; it doubles with each, up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);

/// The longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Why one attempt failed.
enum Attempt {
    /// No answer, or a temporary failure (5xx, 429): it may have been applied, or may succeed later.
    Unknown(String),
    /// The server refused: trying again would not help.
    Refused(ToolError),
}

/// One `POST /api/publish`.
async fn api_publish(
    http: &reqwest::Client,
    url: &str,
    api_key: &str,
    channel: &str,
    body: &str,
) -> Result<Value, Attempt> {
    let response = http
        .post(url)
        .header("authorization", format!("apikey {api_key}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        // Refused at once: nothing was sent, and nothing will be until --api is right.
        Err(e) if e.is_connect() => {
            return Err(Attempt::Refused(ToolError::Usage(format!(
                "cannot reach the server API at {url}: {e}; check --api"
            ))));
        }
        Err(e) => return Err(Attempt::Unknown(format!("no answer from {url}: {e}"))),
    };
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Err(Attempt::Unknown(format!(
                "reading the answer of {url}: {e}"
            )));
        }
    };
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
    let why = format!("the server refused to publish to {channel} (HTTP {status}): {why}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(Attempt::Unknown(why))
    } else {
        Err(Attempt::Refused(ToolError::Refused(why)))
    }
}

/// A random idempotency key: 128 bits, hex.
fn random_key() -> Result<String, ToolError> {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ToolError::Usage(format!("no randomness for an idempotency key: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The idempotency key of publication `line` (`None`: DATA on the command line).
fn key_for(args: &PublishArgs, line: Option<u64>) -> Result<String, ToolError> {
    match (&args.idempotency_key, line) {
        (Some(key), None) => Ok(key.clone()),
        (Some(key), Some(n)) => Ok(format!("{key}-{n}")),
        (None, _) => random_key(),
    }
}

/// Runs `switchboard publish`.
pub async fn publish(args: PublishArgs) -> Result<(), ToolError> {
    if let Some(key) = &args.idempotency_key
        && (key.is_empty() || key.len() > 100)
    {
        return Err(ToolError::Usage(
            "--idempotency-key must have 1 to 100 bytes".into(),
        ));
    }
    if args.data != "-" {
        let data = parse(&args.data, args.text).map_err(|e| {
            ToolError::Usage(format!(
                "DATA is not JSON ({e}): quote it for the shell, e.g. '{{\"text\":\"hi\"}}' or '\"hi\"', or pass --text"
            ))
        })?;
        let key = key_for(&args, None)?;
        let target = Target::new(&args).await?;
        let result = target.publish(&args.channel, data, &key).await;
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
        target
            .publish(&args.channel, data, &key_for(args, Some(number))?)
            .await?;
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
