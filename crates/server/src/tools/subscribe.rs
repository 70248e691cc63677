//! `switchboard subscribe CHANNEL`: publications as JSON lines on stdout, state on stderr.

use std::io::Write;

use switchboard_client::{Client, Closed, Event, Publication, Recovery, State};

use super::{ToolError, client, interrupted};
use crate::cli::SubscribeArgs;

/// Runs `switchboard subscribe`: until SIGINT/SIGTERM, `--count` publications, stdout closing (a
/// reader such as `head` that had enough), or a server that ends the subscription for good.
pub async fn subscribe(args: SubscribeArgs) -> Result<(), ToolError> {
    // Installed first: from here on SIGINT ends the command cleanly, even while it connects.
    let stop = interrupted();
    let (client, url) = client(&args.client)?;
    let ended = tokio::select! {
        ended = follow(&client, &url, &args) => ended,
        () = stop => Ok(()),
    };
    client.close().await;
    ended
}

async fn follow(client: &Client, url: &str, args: &SubscribeArgs) -> Result<(), ToolError> {
    eprintln!("switchboard: connecting to {url}");
    client
        .connect()
        .await
        .map_err(|e| ToolError::from_client("connect", e))?;
    if let Some(id) = client.client_id() {
        eprintln!("switchboard: connected as {id}");
    }
    let mut sub = client
        .subscribe(args.channel.as_str())
        .await
        .map_err(|e| ToolError::from_client(&format!("subscribe to {}", args.channel), e))?;
    eprintln!("switchboard: subscribed to {}", args.channel);
    // Ends by itself when the client closes.
    tokio::spawn(report_states(client.state()));

    let closed = stdout_closed();
    tokio::pin!(closed);
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        let event = tokio::select! {
            event = sub.recv() => event,
            // The reader went away (`| head -n 1`): that is how pipes end, not an error.
            () = &mut closed => return Ok(()),
        };
        match event {
            Some(Event::Publication(p)) => {
                if !print(&args.channel, &p) {
                    // A write that fails: the reader is gone too (or the disk is full).
                    return Ok(());
                }
                printed += 1;
            }
            Some(Event::Subscribed(s)) => match s.recovery {
                Recovery::Recovered => {
                    eprintln!("switchboard: resubscribed to {}: recovered", args.channel)
                }
                Recovery::Lost => eprintln!(
                    "switchboard: resubscribed to {}: publications sent meanwhile could not be recovered",
                    args.channel
                ),
                Recovery::Fresh => {}
            },
            // Never silent (issue 18): say which publication could not be read, and go on.
            Some(Event::Undecodable { offset, error }) => eprintln!(
                "switchboard: {} offset {offset}: a publication could not be decoded and was skipped: {error}",
                args.channel
            ),
            Some(Event::Unsubscribed { code, reason }) => {
                return Err(ToolError::Refused(format!(
                    "the server ended the subscription: {code} {reason}"
                )));
            }
            Some(_) => {}
            None => {
                let why = match &*client.state().borrow() {
                    State::Closed(Closed::ByServer { code, reason }) => {
                        format!("disconnected by the server: {code} {reason}")
                    }
                    State::Closed(Closed::Refused(e)) => format!("reconnect refused: {e}"),
                    other => format!("the connection ended ({other:?})"),
                };
                return Err(ToolError::Refused(why));
            }
        }
    }
}

/// Writes one publication as a JSON line and flushes it, for pipes; false once stdout is closed.
fn print(channel: &str, p: &Publication) -> bool {
    let mut line = serde_json::Map::new();
    line.insert("channel".into(), channel.into());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(p) {
        line.extend(fields);
    }
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &line)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    written.is_ok()
}

/// Resolves when stdout's reader has gone away (the read end of a pipe closed), without waiting for
/// the next write to fail: a quiet channel must not keep a finished pipeline alive. Never resolves
/// where stdout cannot be watched.
async fn stdout_closed() {
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not `spawn_blocking`: the runtime would wait for it at exit. poll(2) reports
    // POLLERR for a pipe whose reader closed and POLLHUP for a terminal that hung up, without any
    // event asked for; a regular file reports nothing and the thread just sleeps.
    let watcher = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
            loop {
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(n) if n > 0 => break,
                    Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                    Err(_) => return,
                }
            }
            let _ = tx.send(());
        });
    if watcher.is_ok() && rx.await.is_ok() {
        return;
    }
    std::future::pending().await
}

/// Tells on stderr how the connection fares after the first connect.
async fn report_states(mut states: tokio::sync::watch::Receiver<State>) {
    // Only changes from now on: the first connect was told already.
    states.borrow_and_update();
    while states.changed().await.is_ok() {
        let state = states.borrow_and_update().clone();
        match state {
            State::Connecting => eprintln!("switchboard: connecting"),
            State::Connected { client } => eprintln!("switchboard: connected as {client}"),
            State::Reconnecting {
                attempt,
                delay,
                reason,
            } => eprintln!(
                "switchboard: {reason}; reconnecting in {:.1}s (attempt {attempt})",
                delay.as_secs_f64()
            ),
            _ => {}
        }
    }
}
