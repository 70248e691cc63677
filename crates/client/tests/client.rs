//! The client against the real server, started in-process on 127.0.0.1: every command, typed errors,
//! and reconnects that recover every publication exactly once, in order.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::{Config, Server, ShutdownHandle};
use switchboard_client::{
    Client, Closed, Data, Error, ErrorCode, Event, HistoryOptions, Publication, Recovery, State,
    Subscription,
};
use switchboard_hub::NamespaceOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const KEY: &str = "test-api-key";
/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    api: SocketAddr,
    handle: ShutdownHandle,
    task: JoinHandle<()>,
}

impl TestServer {
    fn url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Calls the server API; the `result`, or panics.
    async fn api(&self, method: &str, body: Value) -> Value {
        let body = body.to_string();
        let mut stream = TcpStream::connect(self.api).await.unwrap();
        let request = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{method}: {response}");
        serde_json::from_str::<Value>(body).unwrap()["result"].clone()
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.api.key = KEY.into();
    let ns = &mut c.channels.namespaces;
    ns.insert(
        "chat".into(),
        NamespaceOptions::all_on(1000, Duration::from_secs(300)),
    );
    ns.insert(
        "readonly".into(),
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        },
    );
    c
}

async fn start(mut c: Config) -> TestServer {
    c.listen.0 = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    start_at(c).await
}

async fn start_at(c: Config) -> TestServer {
    let server = Server::bind(c).await.expect("bind");
    let addr = server.local_addr();
    let api = server.api_addr();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    TestServer {
        addr,
        api,
        handle,
        task,
    }
}

async fn client(s: &TestServer) -> Client {
    let c = Client::builder(s.url())
        .name("test")
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .timeout(WAIT)
        .build()
        .unwrap();
    c.connect().await.unwrap();
    c
}

async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("an event in time")
        .expect("the subscription goes on")
}

async fn next_publication(sub: &mut Subscription) -> Publication {
    loop {
        if let Event::Publication(p) = next(sub).await {
            return p;
        }
    }
}

/// Waits until the state satisfies `f`.
async fn wait_state(c: &Client, f: impl Fn(&State) -> bool) -> State {
    let mut rx = c.state();
    let s = tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .expect("state in time")
        .expect("the client runs");
    s.clone()
}

#[tokio::test]
async fn subscribe_publish_presence_history() {
    let s = start(config()).await;
    let c = client(&s).await;
    let me = c.client_id().expect("connected");
    let mut sub = c.subscribe("chat:room").await.unwrap();
    assert_eq!(sub.channel(), "chat:room");
    let Event::Subscribed(first) = next(&mut sub).await else {
        panic!("Subscribed first")
    };
    assert_eq!(first.recovery, Recovery::Fresh);
    assert!(first.recoverable);
    assert_eq!(first.position.as_ref().map(|p| p.offset), Some(0));
    let Event::Join(join) = next(&mut sub).await else {
        panic!("own join")
    };
    assert_eq!(join.client, me);

    let pos = c.publish("chat:room", json!({"text": "hi"})).await.unwrap();
    assert_eq!(pos.offset, 1);
    assert_eq!(pos.epoch, first.position.unwrap().epoch);
    let p = next_publication(&mut sub).await;
    assert_eq!((p.offset, &p.data), (1, &Data::Json(json!({"text": "hi"}))));
    assert_eq!(p.info.map(|i| i.client), Some(me.clone()));
    c.publish("chat:room", vec![0u8, 159, 255]).await.unwrap();
    let p = next_publication(&mut sub).await;
    assert_eq!(p.data, Data::Binary(vec![0, 159, 255]));

    let presence = c.presence("chat:room").await.unwrap();
    assert_eq!(presence[&me].client, me);
    let stats = c.presence_stats("chat:room").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    let h = c
        .history("chat:room", HistoryOptions::default())
        .await
        .unwrap();
    assert_eq!(h.position.offset, 2);
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2]
    );
    let h = c
        .history(
            "chat:room",
            HistoryOptions {
                limit: Some(1),
                reverse: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(h.publications[0].data, Data::Binary(vec![0, 159, 255]));

    // Many commands in flight at once each get their own reply.
    let calls: Vec<_> = (0..50)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move { c.publish("chat:many", json!(n)).await.unwrap().offset })
        })
        .collect();
    let mut offsets = Vec::new();
    for call in calls {
        offsets.push(call.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=50).collect::<Vec<u64>>());

    c.close().await;
    assert_eq!(*c.state().borrow(), State::Closed(Closed::ByClient));
    assert!(
        sub.recv().await.is_none(),
        "the stream ends with the client"
    );
    assert!(matches!(
        c.publish("chat:room", json!(1)).await,
        Err(Error::Closed)
    ));
    s.stop().await;
}

#[tokio::test]
async fn errors_are_typed() {
    let s = start(config()).await;
    let c = client(&s).await;
    let Err(Error::Server(e)) = c.rpc("anything", json!({"x": 1})).await else {
        panic!("rpc without a handler must fail")
    };
    assert_eq!(
        (e.code, e.kind(), e.temporary),
        (108, Some(ErrorCode::NotAvailable), false)
    );
    let e = c.publish("readonly:x", json!(1)).await.unwrap_err();
    assert_eq!(e.server_code(), Some(103), "{e}");
    let e = c.subscribe("nowhere:x").await.unwrap_err();
    assert_eq!(e.server_code(), Some(102), "{e}");
    let e = c
        .history(
            "chat:nothing",
            HistoryOptions {
                since: Some(switchboard_client::StreamPosition {
                    offset: 1,
                    epoch: "not-this-one".into(),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some(112), "{e}");
    let _sub = c.subscribe("chat:once").await.unwrap();
    assert!(matches!(
        c.subscribe("chat:once").await,
        Err(Error::AlreadySubscribed(ch)) if ch == "chat:once"
    ));
    // The refused subscribe left nothing behind: the channel can be subscribed after a drop.
    drop(_sub);
    let _again = c.subscribe("chat:once").await.unwrap();

    // Before any connection, commands say so instead of waiting.
    let lonely = Client::builder(s.url()).build().unwrap();
    assert!(matches!(
        lonely.rpc("m", Value::Null).await,
        Err(Error::NotConnected)
    ));
    s.stop().await;
}

#[tokio::test]
async fn a_failed_first_connect_is_returned_not_retried() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let c = Client::builder(format!("ws://{addr}/connection/websocket"))
        .build()
        .unwrap();
    let e = c.connect().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert_eq!(*c.state().borrow(), State::Disconnected);

    for bad in ["http://127.0.0.1/x", "127.0.0.1:8080", "ws://bad host/"] {
        assert!(
            matches!(Client::builder(bad).build(), Err(Error::InvalidUrl { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn reconnects_and_recovers_every_publication_exactly_once_in_order() {
    let s = start(config()).await;
    let c = Client::builder(s.url())
        // Long enough that the publications below land while the client is away.
        .backoff(Duration::from_millis(300), Duration::from_millis(600))
        .timeout(WAIT)
        .build()
        .unwrap();
    c.connect().await.unwrap();
    let mut sub = c.subscribe("chat:feed").await.unwrap();
    for n in 1..=5 {
        s.api("publish", json!({"channel": "chat:feed", "data": {"n": n}}))
            .await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(next_publication(&mut sub).await.offset);
    }

    // The server drops the client with a code that says: reconnect.
    let first_id = c.client_id().unwrap();
    let r = s
        .api(
            "disconnect",
            json!({"user": "", "client": first_id, "code": 3000}),
        )
        .await;
    assert_eq!(r["clients"], 1);
    let state = wait_state(&c, |s| matches!(s, State::Reconnecting { .. })).await;
    let State::Reconnecting {
        attempt, reason, ..
    } = state
    else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(reason.contains("3000"), "{reason}");
    for n in 6..=15 {
        s.api("publish", json!({"channel": "chat:feed", "data": {"n": n}}))
            .await;
    }
    // A command made while away waits for the new connection.
    let published = c.publish("chat:feed", json!({"n": 16})).await.unwrap();
    assert_eq!(published.offset, 16);
    let second_id = c.client_id().unwrap();
    assert_ne!(first_id, second_id);

    let mut recovered = false;
    while got.len() < 16 {
        match next(&mut sub).await {
            Event::Publication(p) => {
                assert_eq!(p.data, Data::Json(json!({"n": p.offset})));
                got.push(p.offset);
            }
            Event::Subscribed(info) => {
                assert_eq!(info.recovery, Recovery::Recovered);
                recovered = true;
            }
            _ => {}
        }
    }
    assert!(recovered);
    assert_eq!(got, (1..=16).collect::<Vec<u64>>());

    // Nothing doubled arrives later either.
    s.api(
        "publish",
        json!({"channel": "chat:feed", "data": {"n": 17}}),
    )
    .await;
    assert_eq!(next_publication(&mut sub).await.offset, 17);
    s.stop().await;
}

#[tokio::test]
async fn a_restarted_server_means_lost_publications_and_says_so() {
    let s = start(config()).await;
    let addr = s.addr;
    let c = client(&s).await;
    let mut sub = c.subscribe("chat:restart").await.unwrap();
    c.publish("chat:restart", json!(1)).await.unwrap();
    assert_eq!(next_publication(&mut sub).await.offset, 1);
    // The in-memory engine starts a new epoch: nothing can be recovered.
    s.stop().await;
    wait_state(&c, |s| matches!(s, State::Reconnecting { .. })).await;
    let mut again = config();
    again.listen.0 = addr;
    again.api.listen = "127.0.0.1:0".parse().unwrap();
    let s = start_at(again).await;
    loop {
        if let Event::Subscribed(info) = next(&mut sub).await {
            assert_eq!(info.recovery, Recovery::Lost);
            assert_eq!(info.position.map(|p| p.offset), Some(0));
            break;
        }
    }
    c.publish("chat:restart", json!(2)).await.unwrap();
    let p = next_publication(&mut sub).await;
    assert_eq!((p.offset, p.data), (1, Data::Json(json!(2))));
    s.stop().await;
}

#[tokio::test]
async fn a_code_that_says_do_not_reconnect_closes_the_client() {
    let s = start(config()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("chat:end").await.unwrap();
    let id = c.client_id().unwrap();
    s.api(
        "disconnect",
        json!({"user": "", "client": id, "code": 3503}),
    )
    .await;
    let state = wait_state(&c, |s| matches!(s, State::Closed(_))).await;
    assert!(
        matches!(&state, State::Closed(Closed::ByServer { code: 3503, .. })),
        "{state:?}"
    );
    while let Some(e) = tokio::time::timeout(WAIT, sub.recv()).await.unwrap() {
        assert!(!matches!(e, Event::Publication(_)));
    }
    assert!(matches!(
        c.publish("chat:end", json!(1)).await,
        Err(Error::Closed)
    ));
    s.stop().await;
}

#[tokio::test]
async fn a_server_side_unsubscribe_ends_the_subscription() {
    let s = start(config()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("chat:kick").await.unwrap();
    let id = c.client_id().unwrap();
    s.api(
        "unsubscribe",
        json!({"user": "", "client": id, "channel": "chat:kick"}),
    )
    .await;
    loop {
        match next(&mut sub).await {
            Event::Unsubscribed { code, .. } => {
                assert_eq!(code, 2000);
                break;
            }
            Event::Publication(p) => panic!("{p:?}"),
            _ => {}
        }
    }
    assert!(sub.recv().await.is_none());
    // The client itself carries on.
    c.publish("chat:kick", json!(1)).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn server_pings_are_answered_and_the_connection_stays() {
    let mut c = config();
    // Pings every 100 ms, and a connection that does not answer within 200 ms is dropped.
    c.websocket.ping_interval = Duration::from_millis(100);
    c.websocket.pong_timeout = Duration::from_millis(200);
    c.websocket.idle_timeout = Duration::from_millis(400);
    let s = start(c).await;
    let c = client(&s).await;
    let id = c.client_id().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.client_id(), Some(id), "{:?}", *c.state().borrow());
    c.publish("chat:alive", json!(1)).await.unwrap();
    s.stop().await;
}
