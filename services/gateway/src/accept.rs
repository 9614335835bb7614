//! The accept loop: every connection goes to hyper, except one whose first request
//! opens a notification stream.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for the life of every
//! HTTP/1 connection. For a request-response connection that is nothing; for an idle
//! Server-Sent Events stream held open for hours, by 100,000s of users, it is most of
//! what the stream costs. So a connection whose first request is
//! `GET /v1/notifications/stream` over HTTP/1.1 (what `EventSource` sends on a fresh
//! connection) is answered here: the request head is parsed with `httparse`, goes
//! through the same router (authentication, rate limits, request ids, tracing, CORS,
//! metrics, problem+json), and the response is written straight to the socket with
//! chunked encoding; the connection closes when the stream ends. Every other first
//! request (or an odd one: a body, `Upgrade`, `Expect`, HTTP/1.0, HTTP/2, a malformed
//! head) is handed to hyper together with the bytes already read, so those behave
//! exactly as before; a stream requested later on a kept-alive connection is served by
//! hyper too.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use bytes::{Buf, Bytes};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The longest request head the stream path parses; a longer one goes to hyper.
const MAX_STREAM_HEAD: usize = 16 * 1024;
/// Headers the stream path parses; more go to hyper.
const MAX_HEADERS: usize = 64;
/// A client that takes no bytes for this long is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting,
/// asks every connection to finish (hyper's graceful shutdown: the request in flight
/// is answered, idle keep-alive connections close) and waits for them.
pub async fn serve<F>(listener: TcpListener, router: Router, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        // Events and small answers go out at once, not after the peer's delayed ACK.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.spawn(connection(socket, peer, router.clone(), closing.clone()));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Like hyper's own loop: a reset connection is the client's business; anything else
/// (e.g. out of file descriptors) is logged and retried after a pause, as closing
/// connections may free what is missing.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    closing: CancellationToken,
) {
    match first_request(&socket, &closing).await {
        First::Closed => {}
        First::Stream(mut request) => {
            request.extensions_mut().insert(ConnectInfo(peer));
            serve_stream(socket, request, router).await;
        }
        First::Other(read) => {
            let io = Prefixed {
                prefix: Bytes::from(read),
                inner: socket,
            };
            serve_with_hyper(io, peer, router, closing).await;
        }
    }
}

/// What the first request of a connection is.
enum First {
    /// The client closed (or the gateway is closing) before sending anything.
    Closed,
    /// A notification stream, parsed.
    Stream(Request<Body>),
    /// Anything else, for hyper, with the bytes read so far.
    Other(Vec<u8>),
}

/// Reads until the first request is known to be a stream (or not). The buffer is
/// allocated only once bytes are waiting, so an idle connection holds none.
async fn first_request(socket: &TcpStream, closing: &CancellationToken) -> First {
    let mut read: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            _ = closing.cancelled(), if read.is_empty() => return First::Closed,
            ready = socket.readable() => {
                if ready.is_err() {
                    return First::Closed;
                }
            }
        }
        if read.len() == read.capacity() {
            read.reserve(if read.is_empty() { 1024 } else { read.len() });
        }
        match socket.try_read_buf(&mut read) {
            Ok(0) if read.is_empty() => return First::Closed,
            // Half a head and then EOF: hyper answers that as it always did.
            Ok(0) => return First::Other(read),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) if read.is_empty() => return First::Closed,
            Err(_) => return First::Other(read),
        }
        match classify(&read) {
            Classified::Undecided if read.len() < MAX_STREAM_HEAD => {}
            Classified::Undecided | Classified::Other => return First::Other(read),
            Classified::Stream(request) => return First::Stream(request),
        }
    }
}

enum Classified {
    /// More bytes are needed to tell.
    Undecided,
    Stream(Request<Body>),
    Other,
}

/// How a stream request begins (then a space or `?`).
const STREAM_REQUEST_LINE: &[u8] = b"GET /v1/notifications/stream";

fn classify(read: &[u8]) -> Classified {
    let head = STREAM_REQUEST_LINE;
    let seen = read.len().min(head.len());
    if read[..seen] != head[..seen] {
        return Classified::Other;
    }
    let Some(after) = read.get(head.len()) else {
        return Classified::Undecided;
    };
    if !matches!(after, b' ' | b'?') {
        return Classified::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(read) {
        Ok(httparse::Status::Partial) => Classified::Undecided,
        Ok(httparse::Status::Complete(_)) => match stream_request(&parsed) {
            Some(request) => Classified::Stream(request),
            None => Classified::Other,
        },
        Err(_) => Classified::Other,
    }
}

/// The request as the router takes it, if this path can answer it: HTTP/1.1, no body,
/// no upgrade or expectation, every header valid.
fn stream_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let uri: Uri = parsed.path?.parse().ok()?;
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body || headers.contains_key(header::UPGRADE) || headers.contains_key(header::EXPECT) {
        return None;
    }
    Some(request)
}

/// Answers the stream request and writes its body until it ends or the client leaves.
async fn serve_stream(mut socket: TcpStream, request: Request<Body>, router: Router) {
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // Framing is this writer's to set.
        if matches!(
            *name,
            header::CONNECTION | header::TRANSFER_ENCODING | header::CONTENT_LENGTH
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    let chunked = length.is_none();

    let (mut reader, mut writer) = socket.split();
    if write(&mut writer, &head).await.is_err() {
        return;
    }
    drop(head);
    let mut data = body.into_data_stream();
    // What the client sends after its request (nothing, normally) is read and dropped,
    // so its leaving is seen at once, not at the next keep-alive.
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            next = data.next() => match next {
                Some(Ok(bytes)) if bytes.is_empty() => {}
                Some(Ok(bytes)) => {
                    let sent = if chunked {
                        let mut chunk = Vec::with_capacity(bytes.len() + 12);
                        chunk.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
                        chunk.extend_from_slice(&bytes);
                        chunk.extend_from_slice(b"\r\n");
                        write(&mut writer, &chunk).await
                    } else {
                        write(&mut writer, &bytes).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    // No final chunk: the client sees the response cut short.
                    tracing::debug!(error = %e, "stream body failed");
                    return;
                }
                None => break,
            },
            read = tokio::io::AsyncReadExt::read(&mut reader, &mut probe) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
    if chunked && write(&mut writer, b"0\r\n\r\n").await.is_err() {
        return;
    }
    let _ = writer.shutdown().await;
}

async fn write(writer: &mut tokio::net::tcp::WriteHalf<'_>, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// hyper on this connection, as `axum::serve` runs it, with the client's address for
/// the handlers and a graceful end when the gateway closes.
async fn serve_with_hyper(
    io: Prefixed,
    peer: SocketAddr,
    router: Router,
    closing: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }
        _ = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }
    }
}

/// A socket whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                // Frees the buffer rather than keep it for the connection's life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::STREAM_PATH;

    fn is_stream(head: &str) -> Option<bool> {
        match classify(head.as_bytes()) {
            Classified::Undecided => None,
            Classified::Stream(_) => Some(true),
            Classified::Other => Some(false),
        }
    }

    #[test]
    fn the_request_line_is_the_stream_route() {
        assert_eq!(STREAM_REQUEST_LINE, format!("GET {STREAM_PATH}").as_bytes());
    }

    #[test]
    fn only_a_plain_stream_request_is_taken_off_hyper() {
        let stream = "GET /v1/notifications/stream HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(is_stream(stream), Some(true));
        assert_eq!(
            is_stream("GET /v1/notifications/stream?ticket=abc HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(true)
        );
        // Decided from the first bytes when they differ.
        assert_eq!(is_stream("POST /v1/events"), Some(false));
        assert_eq!(is_stream("GET /v1/events HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_stream("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(false));
        assert_eq!(
            is_stream("GET /v1/notifications/stream/ticket HTTP/1.1\r\n\r\n"),
            Some(false)
        );
        assert_eq!(
            is_stream("GET /v1/notifications/streams HTTP/1.1\r\n\r\n"),
            Some(false)
        );
        // Not yet: a prefix of it, or a head not complete.
        assert_eq!(is_stream("GE"), None);
        assert_eq!(is_stream("GET /v1/notifications/str"), None);
        assert_eq!(
            is_stream("GET /v1/notifications/stream HTTP/1.1\r\nHost: x\r\n"),
            None
        );
        // Odd ones stay with hyper.
        for odd in [
            "GET /v1/notifications/stream HTTP/1.0\r\n\r\n",
            "GET /v1/notifications/stream HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /v1/notifications/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/notifications/stream HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/notifications/stream HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /v1/notifications/stream HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /v1/notifications/stream HTTP/1.1\r\nX: \x01\r\n\r\n",
        ] {
            assert_eq!(is_stream(odd), Some(false), "{odd:?}");
        }
        let zero = "GET /v1/notifications/stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(is_stream(zero), Some(true));
    }

    #[test]
    fn the_parsed_request_keeps_its_query_and_headers() {
        let head = "GET /v1/notifications/stream?last_event_id=7 HTTP/1.1\r\n\
                    Host: gw\r\nLast-Event-ID: 9\r\nAccept: text/event-stream\r\n\r\n";
        let Classified::Stream(request) = classify(head.as_bytes()) else {
            panic!("not taken as a stream");
        };
        assert_eq!(request.uri().query(), Some("last_event_id=7"));
        assert_eq!(request.headers()["last-event-id"], "9");
        assert_eq!(request.headers()[header::HOST], "gw");
        assert_eq!(request.version(), Version::HTTP_11);
    }

    #[tokio::test]
    async fn prefixed_bytes_are_read_before_the_socket() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b" world").await.expect("write");
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let mut io = Prefixed {
            prefix: Bytes::from_static(b"hello"),
            inner: socket,
        };
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        client.await.expect("client");
        assert_eq!(all, b"hello world");
    }
}
