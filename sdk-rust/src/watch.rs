//! [`Watch`]: push notifications of an account's changes, as a `Stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use quail_protocol::quail_capnp::{ObjectKind as WireKind, listener, query_listener};
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
                Ok(WireKind::Submission) => ObjectKind::Submission,
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

/// A live query (see `Session::watch_query`): the window when it began,
/// then its changes as a `Stream`. Dropping it stops the watch.
#[derive(Debug)]
pub struct QueryWatch {
    client: Client,
    cap: u64,
    /// The window when the watch began.
    pub initial: crate::types::QueryPage,
    events: mpsc::Receiver<crate::types::QueryChanges>,
}

impl QueryWatch {
    pub(crate) async fn start(client: Client, session: u64, q: crate::types::Query) -> Result<QueryWatch> {
        let (tx, events) = mpsc::channel(BUFFER);
        let (cap, initial) = client
            .call(move |conn| async move {
                let l: query_listener::Client = capnp_rpc::new_client(QueryListenerImpl { tx });
                let mut req = conn.session(session)?.watch_query_request();
                crate::session::write_query(req.get().init_query(), &q);
                req.get().set_listener(l);
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let page = crate::session::read_page(r.get_result()?)?;
                Ok((conn.insert(Cap::Watch(r.get_handle()?)), page))
            })
            .await?;
        Ok(QueryWatch { client, cap, initial, events })
    }

    /// The next change; `None` once the watch has ended.
    pub async fn next_change(&mut self) -> Option<crate::types::QueryChanges> {
        self.events.recv().await
    }
}

impl futures::Stream for QueryWatch {
    type Item = crate::types::QueryChanges;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for QueryWatch {
    fn drop(&mut self) {
        self.client.release(self.cap);
    }
}

struct QueryListenerImpl {
    tx: mpsc::Sender<crate::types::QueryChanges>,
}

impl query_listener::Server for QueryListenerImpl {
    async fn changed(
        self: std::rc::Rc<Self>,
        params: query_listener::ChangedParams,
        _: query_listener::ChangedResults,
    ) -> std::result::Result<(), capnp::Error> {
        let c = crate::session::read_query_changes(params.get()?.get_changes()?)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        self.tx.send(c).await.map_err(|_| capnp::Error::disconnected("the watch was dropped".into()))
    }
}
