//! `switchboard-bench`: the benchmark tool of switchboard. It holds the peer echo servers that
//! switchboard is compared with, a load generator with its own minimal RFC 6455 client (so no
//! WebSocket crate under test is also on the client side), and the orchestrator that runs them
//! all pinned to separate cores and prints the comparison table. See docs/benchmarks.md.
//!
//! The fan-out and transports benchmarks share code: their load generators (`fanout-load`,
//! `transports-load`) the phases, publisher thread, set-up and sequence checks of [`load`]; their
//! orchestrators the rounds, noise retries, load-generator child and versions of [`harness`]
//! (processes started pinned, markdown helpers).
//!
//! ```text
//! switchboard-bench peer tungstenite --listen 127.0.0.1:9001
//! switchboard-bench tput --addr 127.0.0.1:9001 --path /echo --server-pid PID
//! switchboard-bench idle --addr 127.0.0.1:9001 -n 10000 --server-pid PID
//! switchboard-bench run --quick
//! switchboard-bench fanout --quick
//! switchboard-bench transports --quick
//! ```

mod echo;
mod fanout;
mod harness;
mod idle;
mod load;
mod peers;
mod procfs;
mod run;
mod tput;
mod transports;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmark tool of switchboard: peer echo servers, load generator and orchestrator.
#[derive(Parser, Debug)]
#[command(name = "switchboard-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a peer echo server (bench-only) until killed.
    Peer(peers::PeerArgs),
    /// Pipelined echo throughput and round-trip times against a running server.
    Tput(tput::TputArgs),
    /// Open many idle connections against a running server and report its memory.
    Idle(idle::IdleArgs),
    /// Run every server and test, pinned to separate cores, and print the comparison.
    Run(run::RunArgs),
    /// Fan-out benchmark: switchboard, Nchan and Socket.IO side by side (many subscribers per
    /// channel, many channels), pinned to separate cores.
    Fanout(fanout::FanoutArgs),
    /// The fan-out load generator: subscribers and a publisher against one running server.
    FanoutLoad(fanout::load::LoadArgs),
    /// The fan-out reference: one thread writes each publication's bytes to every subscriber's
    /// plain TCP socket (no WebSocket); the fan-out figures are divided by its.
    FanoutRaw(fanout::raw::RawArgs),
    /// "Why WebSocket, measured": one chat room over WebSocket, SSE, long polling, ajax polling
    /// and Socket.IO's long-polling, side by side (requests, bytes, CPU, latency per message).
    Transports(transports::TransportsArgs),
    /// The transports load generator: N clients of one transport in one room, and a publisher.
    TransportsLoad(transports::load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Peer(args) => peers::run(args),
        Cmd::Tput(args) => tput::main(args),
        Cmd::Idle(args) => idle::main(args),
        Cmd::Run(args) => run::main(args),
        Cmd::Fanout(args) => fanout::main(args),
        Cmd::FanoutLoad(args) => fanout::load::main(args),
        Cmd::FanoutRaw(args) => fanout::raw::main(args),
        Cmd::Transports(args) => transports::main(args),
        Cmd::TransportsLoad(args) => transports::load::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
