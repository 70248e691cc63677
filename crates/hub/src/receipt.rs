//! Receipts: how the server API's `subscribe` and `unsubscribe` learn that the clients' own tasks
//! carried their orders out, so that the API answers once the subscription is in place.
//!
//! Without them the answer only said the order was queued. A backend that subscribes a user and
//! publishes right after (a "welcome" into a new room) raced the client's task: the publication
//! could reach the channel before the client did, and the subscription's position was then taken
//! after it, so no recovery would bring it back either.
//!
//! Each order carries a [`Receipt`]; the call that gave the orders waits on its [`Receipts`] until
//! every receipt it handed out is settled: signed by the client's task once the order took effect,
//! or dropped unsigned (the client went away with the order queued, or the order failed). A
//! dropped receipt cannot leave the caller waiting, and the wait is bounded besides, for a client
//! whose task is held up (its wire full, a slow proxy).

use std::time::Duration;

use tokio::sync::mpsc;

/// Travels with an order to a client's task, which signs it once the order took effect.
#[derive(Debug, Clone)]
pub struct Receipt(Option<mpsc::UnboundedSender<()>>);

impl Receipt {
    /// A receipt nobody waits on, for orders whose outcome the giver does not need.
    pub fn none() -> Self {
        Self(None)
    }

    /// The order took effect (the client is subscribed, or not subscribed any more).
    pub fn sign(self) {
        if let Some(tx) = self.0 {
            // The giver may have stopped waiting (its bound passed): then nobody needs to know.
            let _ = tx.send(());
        }
    }
}

/// Two receipts are equal when they report to the same giver, so that orders compare as orders.
impl PartialEq for Receipt {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_channel(b),
            _ => false,
        }
    }
}

impl Eq for Receipt {}

/// The giver's side: hands out receipts and waits for them.
#[derive(Debug)]
pub struct Receipts {
    tx: mpsc::UnboundedSender<()>,
    rx: mpsc::UnboundedReceiver<()>,
}

impl Default for Receipts {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx }
    }
}

impl Receipts {
    /// A receipt to send with one order.
    pub fn receipt(&self) -> Receipt {
        Receipt(Some(self.tx.clone()))
    }

    /// Waits until every receipt handed out is signed or dropped, or `within` passed. How many
    /// were signed by then.
    pub async fn wait(self, within: Duration) -> usize {
        let Self { tx, mut rx } = self;
        // Ours would keep the channel open: only the receipts' senders may.
        drop(tx);
        let deadline = tokio::time::Instant::now() + within;
        let mut signed = 0;
        while let Ok(Some(())) = tokio::time::timeout_at(deadline, rx.recv()).await {
            signed += 1;
        }
        signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wait_counts_signed_receipts_and_ends_when_the_rest_are_dropped() {
        let receipts = Receipts::default();
        let (a, b, c) = (receipts.receipt(), receipts.receipt(), receipts.receipt());
        assert_eq!(a, b);
        assert_ne!(a, Receipt::none());
        let signer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            a.sign();
            drop(b);
            c.sign();
        });
        // Ends as soon as the last receipt is settled, long before the bound.
        let started = std::time::Instant::now();
        assert_eq!(receipts.wait(Duration::from_secs(60)).await, 2);
        assert!(started.elapsed() < Duration::from_secs(30));
        signer.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_receipt_held_past_the_bound_ends_the_wait_unsigned() {
        let receipts = Receipts::default();
        let held = receipts.receipt();
        receipts.receipt().sign();
        assert_eq!(receipts.wait(Duration::from_secs(1)).await, 1);
        // Signing after the giver stopped waiting is harmless.
        held.sign();
    }

    #[tokio::test]
    async fn no_receipt_handed_out_ends_the_wait_at_once() {
        assert_eq!(Receipts::default().wait(Duration::from_secs(60)).await, 0);
    }
}
