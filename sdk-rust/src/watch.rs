//! [`Watch`]: push notifications of an account's changes, as a `Stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use quail_protocol::quail_capnp::{ObjectKind as WireKind, listener};
use tokio::sync::mpsc;

use crate::client::{Cap, Client};
use crate::error::Result;
use crate::types::{ObjectKind, State};

/// One push: the account is now at `state`, durably; `kinds` changed since
/// the previous event (call `Session::changes` for each to see what).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The account's new state.
    pub state: State,
    /// Which kinds of object changed.
    pub kinds: Vec<ObjectKind>,
}

/// Events a watch buffers before the server is made to wait: the server
/// coalesces whatever happens meanwhile into its next call, so a slow
/// reader sees fewer, larger events and never loses one.
const BUFFER: usize = 16;

/// A live watch. Poll it as a `Stream` (`futures::StreamExt::next`);
/// dropping it unsubscribes. The stream ends when the server ends the
/// watch or the connection is lost.
#[derive(Debug)]
pub struct Watch {
    client: Client,
    cap: u64,
    start: State,
    events: mpsc::Receiver<Changed>,
}

impl Watch {
    pub(crate) async fn start(client: Client, session: u64) -> Result<Watch> {
        let (tx, events) = mpsc::channel(BUFFER);
        let (cap, start) = client
            .call(move |conn| async move {
                let listener: listener::Client = capnp_rpc::new_client(ListenerImpl { tx });
                let mut req = conn.session(session)?.watch_request();
                req.get().set_listener(listener);
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let handle = r.get_handle()?;
                Ok((conn.insert(Cap::Watch(handle)), State(r.get_state())))
            })
            .await?;
        Ok(Watch { client, cap, start, events })
    }

    /// The account's state when the watch began: every change after it
    /// arrives as an event.
    pub fn start_state(&self) -> State {
        self.start
    }

    /// The next event; `None` once the watch has ended.
    pub async fn next_change(&mut self) -> Option<Changed> {
        self.events.recv().await
    }
}

impl futures::Stream for Watch {
    type Item = Changed;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Changed>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.client.release(self.cap);
    }
}

struct ListenerImpl {
    tx: mpsc::Sender<Changed>,
}

impl listener::Server for ListenerImpl {
    async fn changed(
        self: std::rc::Rc<Self>,
        params: listener::ChangedParams,
        _: listener::ChangedResults,
    ) -> std::result::Result<(), capnp::Error> {
        let p = params.get()?;
        let mut kinds = Vec::new();
        for k in p.get_kinds()?.iter() {
            kinds.push(match k {
                Ok(WireKind::Email) => ObjectKind::Email,
                Ok(WireKind::Mailbox) => ObjectKind::Mailbox,
                Ok(WireKind::Thread) => ObjectKind::Thread,
                // A kind newer than this SDK: the state still moved.
                Err(_) => continue,
            });
        }
        // Answering only once the event is queued is the back-pressure:
        // the server merges what follows until we answer.
        self.tx
            .send(Changed { state: State(p.get_state()), kinds })
            .await
            .map_err(|_| capnp::Error::disconnected("the watch was dropped".into()))
    }
}
