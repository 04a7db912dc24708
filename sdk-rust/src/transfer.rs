//! [`Download`]: a large object fetched on a bulk stream, to a writer, with
//! progress, resumable after a lost connection; [`Upload`]: a blob sent to
//! the account, not at all when it already holds it, resumable too.

use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::session::ByteRun;

/// A transfer in progress (see `Session::start_fetch_part`).
#[derive(Debug, Clone)]
pub struct Download {
    /// Size of the whole object the range is of.
    pub total_size: u64,
    /// Where the range starts in it.
    pub offset: u64,
    /// Bytes the transfer carries.
    pub length: u64,
    /// Bytes already written out.
    pub done: u64,
    inline: Option<Vec<u8>>,
    token: Option<Vec<u8>>,
    hash: Option<[u8; 32]>,
    hasher: blake3::Hasher,
}

/// Chunks queued between the connection thread and the writer.
const QUEUE: usize = 8;
const CHUNK: usize = 64 * 1024;

impl Download {
    pub(crate) fn new(run: ByteRun, token: Option<Vec<u8>>, hash: Option<[u8; 32]>) -> Self {
        let (length, inline) = match token {
            Some(_) => (0, None),
            None => (run.data.len() as u64, Some(run.data)),
        };
        let mut d = Download {
            total_size: run.total_size,
            offset: run.offset,
            length,
            done: 0,
            inline,
            token,
            hash,
            hasher: blake3::Hasher::new(),
        };
        if d.token.is_some() {
            // Filled in by the first transfer's response.
            d.length = u64::MAX;
        }
        d
    }

    /// Whether every byte has been written out.
    pub fn is_done(&self) -> bool {
        self.done == self.length
    }

    pub(crate) async fn run(
        &mut self,
        client: &Client,
        out: &mut (dyn std::io::Write + Send),
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<()> {
        let io = |e: std::io::Error| Error::InvalidInput(format!("writing the download: {e}"));
        if let Some(data) = self.inline.take() {
            out.write_all(&data).map_err(io)?;
            self.done = data.len() as u64;
            progress(self.done, self.length);
            return Ok(());
        }
        let Some(token) = self.token.clone() else {
            return Ok(());
        };
        if self.is_done() {
            return Ok(());
        }
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>>>(QUEUE);
        let from = self.done;
        let follows = client
            .call(move |conn| async move {
                let (follows, mut reader) = conn.open_download(&token, from).await?;
                tokio::task::spawn_local(async move {
                    use futures::AsyncReadExt;
                    let mut left = follows;
                    while left > 0 {
                        let mut chunk = vec![0u8; CHUNK.min(left as usize)];
                        let item = match reader.read(&mut chunk).await {
                            Ok(0) => Err(Error::Disconnected("the download broke off".into())),
                            Ok(n) => {
                                chunk.truncate(n);
                                left -= n as u64;
                                Ok(chunk)
                            }
                            Err(e) => Err(Error::Disconnected(format!("the download broke off: {e}"))),
                        };
                        let stop = item.is_err();
                        if tx.send(item).await.is_err() || stop {
                            return;
                        }
                    }
                });
                Ok(follows)
            })
            .await?;
        if self.length == u64::MAX {
            self.length = from + follows;
        } else if from + follows != self.length {
            return Err(Error::Protocol(format!(
                "the resumed transfer ends at {}, not {}",
                from + follows,
                self.length
            )));
        }
        while self.done < self.length {
            let chunk = rx
                .recv()
                .await
                .ok_or_else(|| Error::Disconnected("the connection ended mid-download".into()))??;
            out.write_all(&chunk).map_err(io)?;
            self.hasher.update(&chunk);
            self.done += chunk.len() as u64;
            progress(self.done, self.length);
        }
        if let Some(h) = self.hash
            && *self.hasher.finalize().as_bytes() != h
        {
            return Err(Error::Protocol("the downloaded bytes do not match their BLAKE3".into()));
        }
        Ok(())
    }
}

/// A blob offered to the account (see `Session::start_upload`).
#[derive(Debug, Clone)]
pub struct Upload {
    /// The blob's id: the BLAKE3 of its bytes.
    pub blob_id: [u8; 32],
    /// Its size.
    pub size: u64,
    /// The account already held it: nothing was (or will be) sent.
    pub have: bool,
    pub(crate) token: Option<Vec<u8>>,
    pub(crate) written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(crate) done: bool,
}

impl Upload {
    /// Bytes written to the network for this upload so far (all attempts).
    pub fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A counter of the bytes written, to watch from elsewhere.
    pub fn progress(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.written)
    }

    /// Whether the server has the blob (held already, or sent and durable).
    pub fn is_done(&self) -> bool {
        self.have || self.done
    }
}
