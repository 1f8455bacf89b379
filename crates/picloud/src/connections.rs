//! The HTTP listener: hyper's HTTP/1.1 connections with the limits a public
//! server needs, in place of `axum::serve` (which offers none of them).
//!
//! - **Header and idle timeout** (`PICLOUD_HTTP_IDLE_TIMEOUT_SECS`): hyper's
//!   header-read timer runs whenever a connection waits for a request head,
//!   so it closes both a client that sends its headers too slowly (slowloris)
//!   and a keep-alive connection that stays idle.
//! - **Most open connections** (`PICLOUD_MAX_CONNECTIONS`): one semaphore
//!   permit per connection; past the maximum a new connection is answered
//!   `503` with `Connection: close` and closed at once, so established
//!   clients and `/healthz` on a fresh connection after them keep working.
//! - **Stalled writes**: a response write that makes no progress for the same
//!   timeout fails the connection, so a client that stops reading cannot keep it.
//! - **Accept errors** (out of file descriptors) back off from 10 ms to 1 s
//!   and are logged at most once a second, instead of spinning the log.
//! - **Graceful shutdown**: on stop, accepting ends and every connection is
//!   asked to finish its request in flight and close; [`serve`] resolves
//!   when the last one has.

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpListener,
    sync::{watch, Semaphore},
};

/// The limits of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a connection may take to send a request head, or stay idle.
    pub idle_timeout: Duration,
}

/// What a connection past the maximum is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 90\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections; retry in a moment\"}}\n";

/// Serves `app` on `listener` until `stop` resolves, then lets open
/// connections finish; resolves when the last one has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(10);
    let mut last_error_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(error) => {
                let now = tokio::time::Instant::now();
                if last_error_log.is_none_or(|at| now - at >= Duration::from_secs(1)) {
                    tracing::warn!(%error, "accepting a connection failed; backing off");
                    last_error_log = Some(now);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .keep_alive(true);
            let stream = StallLimited::new(stream, limits.idle_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = until_closing(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every permit back means every connection has closed.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}

/// A connection whose writes fail once they have made no progress for
/// `limit`: a client that stops reading its responses (its receive window
/// full) cannot hold the connection, and its file descriptor, forever.
struct StallLimited<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallLimited<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write that could not proceed: pending until the stall limit, then an error.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<R>(&mut self, result: io::Result<R>) -> Poll<io::Result<R>> {
        self.stalled = None;
        Poll::Ready(result)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.stalled(cx),
        }
    }
}

/// Resolves once the listener is closing.
async fn until_closing(closing: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns is dropped at once: it must not live across an await.
    let _ = closing.wait_for(|closing| *closing).await.map(drop);
}

/// Tells a connection past the maximum to come back later, and closes it:
/// answer, end our side, then read what the client sent (briefly) so that the
/// close is orderly — closing with its request unread would reset the
/// connection, and the client might never see the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "unavailable");
    }
}
