//! Commands the application's backend decides (docs/protocol.md with docs/proxy.md): connect,
//! subscribe, publish, rpc, refresh and sub_refresh through a scripted proxy, with the codes its
//! refusals and failures give: the handler's own code, 100, 111, and disconnects 3000, 3004, 3503.

use serde_json::json;
use switchboard_protocol::DisconnectCode;

use super::{Conn, at, proxied_node, pushes, token};
use crate::proxy::{ProxyError, ProxyEvent, ProxyReply};
use crate::session::Signal;

fn refusal(code: u32) -> Result<ProxyReply, ProxyError> {
    Ok(ProxyReply::Error {
        code,
        message: "nope".into(),
    })
}

fn overloaded(event: ProxyEvent) -> Result<ProxyReply, ProxyError> {
    Err(ProxyError::Overloaded { event, cap: 1 })
}

#[tokio::test]
async fn the_connect_proxy_names_the_user_and_its_channels() {
    let (node, script) = proxied_node(&[ProxyEvent::Connect]);
    script.result(
        ProxyEvent::Connect,
        json!({"user": "ann", "info": {"n": 1}, "channels": ["chat:c"], "data": {"hello": true}, "expire_at": at(60)}),
    );
    let mut c = Conn::new(&node);
    let reply = c
        .ok("connect", json!({"name": "js", "data": {"k": "v"}}))
        .await;
    assert_eq!(c.client.user(), "ann");
    assert_eq!(reply["data"], json!({"hello": true}));
    assert_eq!(reply["expires"], true);
    assert!(reply["subs"]["chat:c"].is_object(), "{reply}");
    let call = &script.calls(ProxyEvent::Connect)[0];
    assert_eq!(call["client"], c.client.id());
    assert_eq!(call["name"], "js");
    assert_eq!(call["data"], json!({"k": "v"}));
    // A token skips the proxy.
    let c = Conn::connected(&node, json!({"token": token(json!({"sub": "bob"}))})).await;
    assert_eq!(c.client.user(), "bob");
    assert_eq!(script.calls(ProxyEvent::Connect).len(), 1);
}

#[tokio::test]
async fn connect_proxy_refusals_end_the_connection_with_the_documented_codes() {
    let (node, script) = proxied_node(&[ProxyEvent::Connect]);
    // The application refuses: its code, then 3503 (do not come back).
    script.answer(ProxyEvent::Connect, refusal(4001));
    let mut c = Conn::new(&node);
    assert_eq!(
        c.err("connect", json!({})).await,
        (4001, Err(DisconnectCode::ForceDisconnect))
    );
    // It asks for a disconnect, with or without reconnecting.
    for (reconnect, code) in [
        (true, DisconnectCode::Normal),
        (false, DisconnectCode::ForceDisconnect),
    ] {
        script.answer(
            ProxyEvent::Connect,
            Ok(ProxyReply::Disconnect { reconnect }),
        );
        let mut c = Conn::new(&node);
        c.send("connect", json!({})).await;
        assert_eq!(c.last_flow, Some(Err(code)));
    }
    // It fails or is overloaded: 100 or 111, then 3004 (retry later).
    script.answer(ProxyEvent::Connect, Err(ProxyError::Failed("503".into())));
    let mut c = Conn::new(&node);
    assert_eq!(
        c.err("connect", json!({})).await,
        (100, Err(DisconnectCode::Internal))
    );
    script.answer(ProxyEvent::Connect, overloaded(ProxyEvent::Connect));
    let mut c = Conn::new(&node);
    assert_eq!(
        c.err("connect", json!({})).await,
        (111, Err(DisconnectCode::Internal))
    );
    // An answer that is not a connect result is a failure too.
    script.result(ProxyEvent::Connect, json!({"user": 5}));
    let mut c = Conn::new(&node);
    assert_eq!(
        c.err("connect", json!({})).await,
        (100, Err(DisconnectCode::Internal))
    );
    assert_eq!(node.client_count(), 0);
}

#[tokio::test]
async fn the_refresh_proxy_decides_at_the_connections_expiry() {
    let (node, script) = proxied_node(&[ProxyEvent::Connect, ProxyEvent::Refresh]);
    let exp = at(5);
    script.result(
        ProxyEvent::Connect,
        json!({"user": "ann", "expire_at": exp}),
    );
    let mut c = Conn::anonymous(&node).await;
    // Extended.
    script.result(ProxyEvent::Refresh, json!({"expire_at": exp + 100}));
    assert_eq!(node.expire_clients(exp), 1);
    assert_eq!(c.signal(), Some(Signal::Control));
    c.apply().await;
    assert_eq!(c.signal(), None);
    assert_eq!(node.expire_clients(exp + 99), 0);
    // Failed: asked again later, not disconnected.
    script.answer(ProxyEvent::Refresh, Err(ProxyError::Failed("down".into())));
    assert_eq!(node.expire_clients(exp + 100), 1);
    c.apply().await;
    assert_eq!(c.signal(), None);
    // Expired: 3005.
    script.result(ProxyEvent::Refresh, json!({"expired": true}));
    assert_eq!(node.expire_clients(at(3600)), 1);
    c.apply().await;
    assert_eq!(
        c.signal(),
        Some(Signal::Disconnect(DisconnectCode::Expired))
    );
    assert_eq!(script.calls(ProxyEvent::Refresh).len(), 3);
}

#[tokio::test]
async fn the_subscribe_proxy_grants_with_data_or_refuses_with_its_code() {
    let (node, script) = proxied_node(&[ProxyEvent::Subscribe]);
    let mut c = Conn::anonymous(&node).await;
    script.result(ProxyEvent::Subscribe, json!({"data": {"welcome": 1}}));
    let result = c
        .ok("subscribe", json!({"channel": "app:a", "data": {"ask": 1}}))
        .await;
    assert_eq!(result["data"], json!({"welcome": 1}));
    let call = &script.calls(ProxyEvent::Subscribe)[0];
    assert_eq!(
        (&call["channel"], &call["data"]),
        (&json!("app:a"), &json!({"ask": 1}))
    );
    script.answer(ProxyEvent::Subscribe, refusal(1003));
    assert_eq!(
        c.err("subscribe", json!({"channel": "app:b"})).await,
        (1003, Ok(()))
    );
    script.answer(ProxyEvent::Subscribe, overloaded(ProxyEvent::Subscribe));
    assert_eq!(
        c.err("subscribe", json!({"channel": "app:b"})).await,
        (111, Ok(()))
    );
    script.answer(
        ProxyEvent::Subscribe,
        Ok(ProxyReply::Disconnect { reconnect: false }),
    );
    c.send("subscribe", json!({"channel": "app:b"})).await;
    assert_eq!(c.last_flow, Some(Err(DisconnectCode::ForceDisconnect)));
}

#[tokio::test]
async fn without_a_subscribe_or_publish_handler_the_namespace_answers_108() {
    let (node, _script) = proxied_node(&[]);
    let mut c = Conn::anonymous(&node).await;
    assert_eq!(
        c.err("subscribe", json!({"channel": "app:a"})).await,
        (108, Ok(()))
    );
    assert_eq!(
        c.err("publish", json!({"channel": "app:a", "data": 1}))
            .await,
        (108, Ok(()))
    );
}

#[tokio::test]
async fn the_sub_refresh_proxy_extends_a_proxied_subscription_or_ends_it_with_2501() {
    let (node, script) = proxied_node(&[ProxyEvent::Subscribe, ProxyEvent::SubRefresh]);
    let mut c = Conn::anonymous(&node).await;
    // Granted until a second ago: due at the next sweep.
    script.result(ProxyEvent::Subscribe, json!({"expire_at": at(-1)}));
    c.ok("subscribe", json!({"channel": "app:s"})).await;
    script.result(ProxyEvent::SubRefresh, json!({"expire_at": at(3600)}));
    assert_eq!(node.expire_clients(at(0)), 1);
    c.apply().await;
    assert!(c.drain().is_empty(), "extended");
    assert_eq!(node.subscriber_count("app:s"), 1);
    assert_eq!(
        node.expire_clients(at(3000)),
        0,
        "not due before the new expiry"
    );
    // A failing handler: kept, and asked again later.
    script.result(ProxyEvent::Subscribe, json!({"expire_at": at(-1)}));
    c.ok("subscribe", json!({"channel": "app:f"})).await;
    script.answer(
        ProxyEvent::SubRefresh,
        Err(ProxyError::Failed("down".into())),
    );
    node.expire_clients(at(0));
    c.apply().await;
    assert!(c.drain().is_empty(), "kept while the handler is down");
    assert_eq!(node.expire_clients(at(8)), 0);
    assert_eq!(node.expire_clients(at(11)), 1, "asked again 10 s later");
    c.apply().await;
    // Expired: 2501.
    script.result(ProxyEvent::Subscribe, json!({"expire_at": at(-1)}));
    c.ok("subscribe", json!({"channel": "app:t"})).await;
    script.result(ProxyEvent::SubRefresh, json!({"expired": true}));
    node.expire_clients(at(0));
    c.apply().await;
    let got = c.drain();
    let ended: Vec<_> = pushes(&got, "unsubscribe").into_iter().cloned().collect();
    assert_eq!(
        ended,
        [json!({"channel": "app:t", "code": 2501, "reason": "subscription expired"})],
        "{got:?}"
    );
    assert_eq!(node.subscriber_count("app:t"), 0);
    assert_eq!(node.subscriber_count("app:s"), 1);
    let asked: Vec<_> = script
        .calls(ProxyEvent::SubRefresh)
        .iter()
        .map(|c| c["channel"].clone())
        .collect();
    assert_eq!(asked, [json!("app:s"), json!("app:f"), json!("app:t")]);
}

#[tokio::test]
async fn the_publish_proxy_may_rewrite_and_keep_out_of_history_on_the_same_road() {
    let (node, script) = proxied_node(&[ProxyEvent::Subscribe, ProxyEvent::Publish]);
    let mut sub = Conn::anonymous(&node).await;
    sub.ok("subscribe", json!({"channel": "app:p"})).await;
    let mut c = Conn::anonymous(&node).await;
    // As it came.
    let first = c
        .ok("publish", json!({"channel": "app:p", "data": {"t": "hi"}}))
        .await;
    assert_eq!(first["offset"], 1);
    // Rewritten.
    script.result(ProxyEvent::Publish, json!({"data": {"t": "HI"}}));
    assert_eq!(
        c.ok("publish", json!({"channel": "app:p", "data": {"t": "hi"}}))
            .await["offset"],
        2
    );
    // Binary, rewritten, kept out of history: offset 0 and no epoch.
    script.result(
        ProxyEvent::Publish,
        json!({"b64data": "AQI=", "skip_history": true}),
    );
    let skipped = c
        .ok("publish", json!({"channel": "app:p", "b64data": "AA=="}))
        .await;
    assert_eq!(skipped, json!({"offset": 0}));
    assert_eq!(script.calls(ProxyEvent::Publish)[2]["b64data"], "AA==");
    let got = sub.drain();
    let pubs = pushes(&got, "pub");
    let seen: Vec<_> = pubs
        .iter()
        .map(|p| {
            (
                p["offset"].clone(),
                p.get("data").or(p.get("b64data")).cloned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (json!(1), Some(json!({"t": "hi"}))),
            (json!(2), Some(json!({"t": "HI"}))),
            (json!(0), Some(json!("AQI="))),
        ]
    );
    // Invalid b64data from the handler: 100.
    script.result(ProxyEvent::Publish, json!({"b64data": "!!"}));
    assert_eq!(
        c.err("publish", json!({"channel": "app:p", "data": 1}))
            .await,
        (100, Ok(()))
    );
    // Its refusal: its code; the idempotency key still applies to what it lets through.
    script.answer(ProxyEvent::Publish, refusal(1403));
    assert_eq!(
        c.err("publish", json!({"channel": "app:p", "data": 1}))
            .await,
        (1403, Ok(()))
    );
    let keyed = json!({"channel": "app:p", "data": 1, "idempotency_key": "x"});
    let once = c.ok("publish", keyed.clone()).await;
    assert_eq!(c.ok("publish", keyed).await, once);
}

#[tokio::test]
async fn rpc_answers_the_handlers_data_or_its_error() {
    let (node, script) = proxied_node(&[ProxyEvent::Rpc]);
    let mut c = Conn::anonymous(&node).await;
    script.result(ProxyEvent::Rpc, json!({"data": {"sum": 3}}));
    let reply = c.ok("rpc", json!({"method": "sum", "data": [1, 2]})).await;
    assert_eq!(reply, json!({"data": {"sum": 3}}));
    let call = &script.calls(ProxyEvent::Rpc)[0];
    assert_eq!(
        (&call["method"], &call["data"]),
        (&json!("sum"), &json!([1, 2]))
    );
    // No data in the result: null.
    assert_eq!(
        c.ok("rpc", json!({"method": "x"})).await,
        json!({"data": null})
    );
    script.answer(ProxyEvent::Rpc, refusal(1000));
    let (reply, flow) = c.call("rpc", json!({"method": "x"})).await;
    assert_eq!(flow, Ok(()));
    assert_eq!(
        reply["error"],
        json!({"code": 1000, "message": "nope", "temporary": false})
    );
    script.answer(
        ProxyEvent::Rpc,
        Err(ProxyError::Timeout {
            event: ProxyEvent::Rpc,
            millis: 10,
        }),
    );
    assert_eq!(c.err("rpc", json!({"method": "x"})).await, (100, Ok(())));
    script.answer(ProxyEvent::Rpc, overloaded(ProxyEvent::Rpc));
    assert_eq!(c.err("rpc", json!({"method": "x"})).await, (111, Ok(())));
    script.answer(
        ProxyEvent::Rpc,
        Ok(ProxyReply::Disconnect { reconnect: true }),
    );
    c.send("rpc", json!({"method": "x"})).await;
    assert_eq!(c.last_flow, Some(Err(DisconnectCode::Normal)));
}
