//! The HTTP/1.1 client side: one exchange on a connection to an instance.
//!
//! Written for the proxy rather than taken from hyper's client: the request
//! head goes out in one write, the response head is parsed in place, and
//! the response body is read straight from the socket by the body the
//! client is sent, in the task of the client's connection. No channel, no
//! oneshot, no task per connection, no wake-up between a client connection
//! and its instance connection. The framing rules follow RFC 9112 and
//! hyper's client (which this replaces), so instances see the same
//! requests and clients the same responses.
//!
//! - The request is framed by its `Content-Length`, or by the length the
//!   body knows, or else `Transfer-Encoding: chunked` (never for GET, HEAD
//!   and CONNECT, which are sent without a body then). Hop-by-hop headers,
//!   `Transfer-Encoding` and `Trailer` among them, are gone before this.
//! - The request body is written while the response is read, and goes on
//!   being written while the response body streams, so an instance may
//!   answer before it read everything (its connection is then not reused
//!   unless the upload finished).
//! - Response framing: HEAD, 1xx, 204 and 304 have no body; a
//!   `Transfer-Encoding` ending in `chunked` is decoded (trailers are
//!   passed on), another one is read until close; then `Content-Length`
//!   (several must agree); else until close. 1xx other than 101 are
//!   skipped.
//! - A connection is reused only after a complete exchange that left no
//!   byte unread, when the instance allowed it (HTTP/1.1 without
//!   `Connection: close`, HTTP/1.0 with `keep-alive`), and never after an
//!   upgrade.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::proxy::UpstreamBody;

/// Largest response head (or trailer section) accepted, as hyper's default.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Most header lines in a response head, as hyper's default.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Reads are at least this large.
const READ_SIZE: usize = 8192;
/// Reads of a long body are at most this large.
const MAX_READ_SIZE: usize = 64 * 1024;

/// Why an exchange with an instance failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The socket failed.
    Io(io::Error),
    /// The instance closed the connection before its response was complete.
    Closed,
    /// The instance's response is not valid HTTP/1.1.
    Invalid(&'static str),
    /// The client's request body failed (or went over the limit).
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(err) => write!(f, "connection error: {err}"),
            Error::Closed => f.write_str("connection closed before the response was complete"),
            Error::Invalid(what) => write!(f, "invalid response: {what}"),
            Error::RequestBody(_) => f.write_str("reading the request body failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            Error::RequestBody(err) => Some(&**err),
            Error::Closed | Error::Invalid(_) => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::Io(err)
    }
}

/// A connection to an instance.
pub(crate) struct Conn {
    pub(crate) addr: SocketAddr,
    io: TcpStream,
    /// Read, not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept for the next one's bytes).
    head: Vec<u8>,
    /// Bytes of `head` already written.
    head_written: usize,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr, io: TcpStream) -> Conn {
        Conn {
            addr,
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            head_written: 0,
        }
    }

    fn head_sent(&self) -> bool {
        self.head_written == self.head.len()
    }

    /// Writes the request head, until it is out or writing would block.
    fn poll_write_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.head_sent() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.head[self.head_written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.head_written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether an idle connection still looks usable: the instance did not
    /// close it (nor send anything) as far as the reactor has seen. Costs no
    /// system call unless something arrived.
    pub(crate) fn is_idle_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.io.try_read(&mut probe) {
            Err(err) => err.kind() == io::ErrorKind::WouldBlock,
            // End of stream, or bytes nobody asked for.
            Ok(_) => false,
        }
    }

    /// Reads what the socket has into `buf`: `Ready(0)` at end of stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.clamp(READ_SIZE, MAX_READ_SIZE));
        // `read_buf` fills the spare capacity without zeroing it first; a
        // fresh future per poll costs nothing, it only borrows.
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this much left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// The request body on its way to the instance.
struct Upload {
    body: UpstreamBody,
    /// Chunked, or else `Content-Length` with this much left.
    chunked: bool,
    remaining: u64,
    /// Encoded and not yet written, in order.
    out: Vec<Bytes>,
    /// Bytes of `out[0]` already written.
    written: usize,
    /// The body has ended and its end is queued.
    ended: bool,
}

impl Upload {
    fn is_done(&self) -> bool {
        self.ended && self.out.is_empty()
    }

    /// Writes what is queued and queues more, until the body is out or
    /// something would block.
    fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while !self.out.is_empty() {
                let n = ready!(poll_write_queue(io, cx, &self.out, self.written))?;
                advance_queue(&mut self.out, &mut self.written, n);
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not sent: a request's `Trailer` header is
                    // hop-by-hop and gone, and with it their announcement.
                    if let Ok(data) = frame.into_data() {
                        self.queue_data(data)?;
                    }
                }
                Some(Err(err)) => return Poll::Ready(Err(Error::RequestBody(err))),
                None => {
                    if self.chunked {
                        self.out.push(Bytes::from_static(b"0\r\n\r\n"));
                    } else if self.remaining != 0 {
                        return Poll::Ready(Err(Error::RequestBody(
                            "request body ended before its Content-Length".into(),
                        )));
                    }
                    self.ended = true;
                }
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            self.out
                .push(Bytes::from(format!("{:x}\r\n", data.len()).into_bytes()));
            self.out.push(data);
            self.out.push(Bytes::from_static(b"\r\n"));
        } else {
            let len = data.len() as u64;
            if len > self.remaining {
                return Err(Error::RequestBody(
                    "request body longer than its Content-Length".into(),
                ));
            }
            self.remaining -= len;
            self.out.push(data);
        }
        Ok(())
    }
}

fn poll_write_queue(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    out: &[Bytes],
    written: usize,
) -> Poll<io::Result<usize>> {
    let n = if out.len() == 1 {
        ready!(Pin::new(io).poll_write(cx, &out[0][written..]))?
    } else {
        let mut slices = [IoSlice::new(&[]); 16];
        let mut count = 0;
        for (i, b) in out.iter().take(slices.len()).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &b[written..] } else { b });
            count += 1;
        }
        ready!(Pin::new(io).poll_write_vectored(cx, &slices[..count]))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(n))
}

fn advance_queue(out: &mut Vec<Bytes>, written: &mut usize, mut n: usize) {
    let mut done = 0;
    for b in out.iter() {
        let left = b.len() - if done == 0 { *written } else { 0 };
        if n < left {
            break;
        }
        n -= left;
        done += 1;
        *written = 0;
    }
    out.drain(..done);
    *written += n;
}

/// What an instance answered.
pub(crate) enum Answer {
    /// A response, with its body still to be read from the connection.
    Response(http::response::Parts, InstanceBody),
    /// `101 Switching Protocols`: the connection is the instance's side of
    /// the tunnel; `Bytes` it already sent past the response head.
    Upgraded(http::response::Parts, TcpStream, Bytes),
}

/// Sends `req` on `conn` and reads the response head.
///
/// `req` carries origin-form (or, for CONNECT, authority-form) target and
/// its final headers; this adds only framing headers.
pub(crate) async fn send(mut conn: Conn, req: Request<UpstreamBody>) -> Result<Answer, Error> {
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let mut headers = parts.headers;

    // Framing, as hyper's client does it.
    let mut upload = None;
    if !body.is_end_stream() {
        let existing = content_length(&headers);
        let (chunked, len) = match (existing, body.size_hint().exact()) {
            (Some(Ok(len)), _) => (false, Some(len)),
            (_, Some(len)) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                (false, Some(len))
            }
            // GET, HEAD and CONNECT almost never have bodies: rather than
            // a chunked body, none (as hyper's client).
            _ if method == Method::GET || method == Method::HEAD || method == Method::CONNECT => {
                (false, None)
            }
            _ => {
                headers.remove(CONTENT_LENGTH);
                headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                (true, None)
            }
        };
        if chunked || len.is_some_and(|l| l > 0) {
            upload = Some(Upload {
                body,
                chunked,
                remaining: len.unwrap_or(0),
                out: Vec::new(),
                written: 0,
                ended: false,
            });
        }
    }

    let head = &mut conn.head;
    head.clear();
    conn.head_written = 0;
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) => head.extend_from_slice(pq.as_str().as_bytes()),
        None => match parts.uri.authority() {
            Some(a) => head.extend_from_slice(a.as_str().as_bytes()),
            None => head.push(b'/'),
        },
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // The map goes on to hold the response's headers: no new allocation.
    headers.clear();
    let mut recycled = Some(headers);

    let response = poll_fn(|cx| {
        // The request first; then whatever the instance answered. An
        // answer may come before the whole request went out.
        match conn.poll_write_head(cx) {
            Poll::Ready(Err(err)) => return Poll::Ready(Err(Error::Io(err))),
            Poll::Ready(Ok(())) => {
                if let Some(upload) = upload.as_mut().filter(|u| !u.is_done()) {
                    if let Poll::Ready(Err(err)) = upload.poll(&mut conn.io, cx) {
                        return Poll::Ready(Err(err));
                    }
                }
            }
            Poll::Pending => {}
        }
        loop {
            if let Some(parsed) = parse_head(&mut conn.buf, &method, &mut recycled)? {
                return Poll::Ready(Ok(parsed));
            }
            if conn.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Invalid("response head too large")));
            }
            if ready!(conn.poll_read_more(cx, READ_SIZE))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    })
    .await?;

    let Head {
        parts,
        framing,
        keep_alive,
        upgrade,
    } = response;
    if upgrade {
        let leftover = conn.buf.split().freeze();
        return Ok(Answer::Upgraded(parts, conn.io, leftover));
    }
    // The instance answered before it had all of the request: what is
    // left of the body still goes (see `InstanceBody`), unless the head
    // itself is incomplete, which makes the connection useless.
    let keep_alive = keep_alive && conn.head_sent();
    let upload = upload.filter(|u| !u.is_done()).map(Box::new);
    Ok(Answer::Response(
        parts,
        InstanceBody {
            conn: Some(conn),
            done: false,
            upload,
            framing,
            keep_alive,
        },
    ))
}

struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
}

/// Parses a response head at the start of `buf` (consuming it), skipping
/// informational ones. `None` when more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    recycled: &mut Option<HeaderMap>,
) -> Result<Option<Head>, Error> {
    loop {
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many header fields"))
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = res.reason.unwrap_or("");
        let reason = (Some(reason) != status.canonical_reason())
            .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
            .flatten();
        // Offsets into the head, to slice header values out of it without
        // copying them.
        let base = buf.as_ptr() as usize;
        let mut fields = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = res.headers.len();
        for (f, h) in fields.iter_mut().zip(res.headers.iter()) {
            // The head is at most `MAX_HEAD` bytes: offsets fit in u32.
            let name = (h.name.as_ptr() as usize - base) as u32;
            let value = (h.value.as_ptr() as usize - base) as u32;
            *f = (
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();

        if (100..200).contains(&code) && code != 101 {
            // Informational (100 Continue, 103 Early Hints): not passed on.
            continue;
        }

        let mut headers = recycled.take().unwrap_or_default();
        headers.clear();
        // One more for the `X-Request-Id` the proxy adds.
        headers.reserve(count + 1);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for &(n0, n1, v0, v1) in &fields[..count] {
            let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
            let name = HeaderName::from_bytes(&head[n0..n1])
                .map_err(|_| Error::Invalid("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|_| Error::Invalid("bad header value"))?;
            if name == CONNECTION {
                if saw_close || has_token(&value, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, b"keep-alive");
                }
            }
            headers.append(name, value);
        }

        let mut upgrade = false;
        let framing = match code {
            101 => {
                upgrade = true;
                Framing::Empty
            }
            204 | 304 => Framing::Empty,
            _ if *method == Method::HEAD => Framing::Empty,
            200..=299 if *method == Method::CONNECT => {
                upgrade = true;
                Framing::Empty
            }
            _ if headers.contains_key(TRANSFER_ENCODING) => {
                if version == Version::HTTP_10 {
                    return Err(Error::Invalid("Transfer-Encoding in an HTTP/1.0 response"));
                }
                if is_chunked(&headers) {
                    Framing::Chunked(Chunk::Size)
                } else {
                    Framing::Close
                }
            }
            _ => match content_length(&headers) {
                Some(Ok(len)) => Framing::Length(len),
                Some(Err(())) => return Err(Error::Invalid("bad Content-Length")),
                None => Framing::Close,
            },
        };
        if framing == Framing::Close || upgrade {
            keep_alive = false;
        }

        let mut resp = http::Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some(reason) = reason {
            resp.extensions_mut().insert(reason);
        }
        let (parts, ()) = resp.into_parts();
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive,
            upgrade,
        }));
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last transfer coding is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length`, if any: `Err` unless every value (and list item)
/// is the same decimal number.
fn content_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Some(Err(()));
            }
            let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Some(Err(()));
            }
            found = Some(n);
        }
    }
    found.map(Ok)
}

/// An instance's response body, read from its connection as the client
/// takes it. Once complete, [`InstanceBody::take_reusable`] hands back the
/// connection if it can serve another exchange.
pub(crate) struct InstanceBody {
    /// Once `done`, only kept if it can be reused.
    conn: Option<Conn>,
    /// Complete, or failed.
    done: bool,
    /// The rest of the request body, if the instance answered early.
    upload: Option<Box<Upload>>,
    framing: Framing,
    keep_alive: bool,
}

impl InstanceBody {
    /// The connection, if the body is complete and it can be reused.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if self.done {
            self.conn.take()
        } else {
            None
        }
    }

    /// Ends the body; keeps the connection only if nothing is left over.
    fn finish(&mut self) {
        self.done = true;
        self.framing = Framing::Empty;
        let uploaded = self.upload.as_ref().is_none_or(|u| u.is_done());
        let clean = self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if !(self.keep_alive && uploaded && clean) {
            self.conn = None;
        }
        self.upload = None;
    }

    fn fail(&mut self) {
        self.done = true;
        self.conn = None;
        self.upload = None;
        self.framing = Framing::Empty;
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        // Keep sending what the instance still reads, if anything.
        if let Some(upload) = self.upload.as_mut().filter(|_| conn.head_sent()) {
            match upload.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The instance stopped reading: the response may still
                // complete; the connection will not be reused.
                Poll::Ready(Err(_)) => self.keep_alive = false,
            }
        }
        loop {
            match self.framing {
                Framing::Empty => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        self.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = usize::try_from(left).unwrap_or(usize::MAX);
                    if ready!(conn.poll_read_more(cx, want))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(conn.poll_read_more(cx, MAX_READ_SIZE))? == 0 {
                        self.finish();
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => {
                    match decode_chunk(&mut conn.buf, state)? {
                        Decoded::Data(data, next) => {
                            self.framing = Framing::Chunked(next);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Decoded::Next(next) => {
                            self.framing = Framing::Chunked(next);
                            continue;
                        }
                        Decoded::End(trailers) => {
                            self.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Decoded::NeedMore => {}
                    }
                    if ready!(conn.poll_read_more(cx, READ_SIZE))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
            }
        }
    }
}

enum Decoded {
    Data(Bytes, Chunk),
    Next(Chunk),
    End(Option<HeaderMap>),
    NeedMore,
}

/// One step of chunked decoding over what `buf` holds.
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Decoded, Error> {
    match state {
        Chunk::Size => {
            let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                return Ok(Decoded::NeedMore);
            };
            let line = &buf[..end];
            // chunk-size [ chunk-ext ]; extensions are ignored.
            let digits = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if digits.is_empty() || digits.len() > 16 {
                return Err(Error::Invalid("bad chunk size"));
            }
            let mut size: u64 = 0;
            for &d in digits {
                let v = match d {
                    b'0'..=b'9' => d - b'0',
                    b'a'..=b'f' => d - b'a' + 10,
                    b'A'..=b'F' => d - b'A' + 10,
                    _ => return Err(Error::Invalid("bad chunk size")),
                };
                size = size << 4 | u64::from(v);
            }
            buf.advance(end + 2);
            Ok(Decoded::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = left - n as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Decoded::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok(Decoded::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                buf.advance(2);
                return Ok(Decoded::End(None));
            }
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut storage) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| Error::Invalid("bad trailer name"))?;
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| Error::Invalid("bad trailer value"))?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    Ok(Decoded::End((!trailers.is_empty()).then_some(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(Decoded::NeedMore),
                Ok(httparse::Status::Partial) => Err(Error::Invalid("trailers too large")),
                Err(_) => Err(Error::Invalid("malformed trailers")),
            }
        }
    }
}

/// The position of the first CRLF, looking at most `limit` bytes far.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() > limit => Err(Error::Invalid("chunk-size line too long")),
        None => Ok(None),
    }
}

impl Body for InstanceBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let res = ready!(this.poll_inner(cx));
        if let Some(Err(_)) = &res {
            this.fail();
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.done || matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}

impl InstanceBody {
    /// Completes a body that has nothing left to read (no body, or all of
    /// it read), as hyper may never poll such a body.
    pub(crate) fn complete_if_empty(&mut self) {
        if !self.done && matches!(self.framing, Framing::Empty | Framing::Length(0)) {
            self.finish();
        }
    }
}

/// Writes `leftover`, then joins `client` and the instance's `io` until
/// either side closes.
pub(crate) async fn tunnel<C>(client: &mut C, io: TcpStream, leftover: Bytes) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = io;
    if !leftover.is_empty() {
        tokio::io::AsyncWriteExt::write_all(client, &leftover).await?;
    }
    tokio::io::copy_bidirectional(client, &mut io)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes: the data and trailers.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decode_chunk(&mut buf, state)? {
                Decoded::Data(d, next) => {
                    data.extend_from_slice(&d);
                    state = next;
                }
                Decoded::Next(next) => state = next,
                Decoded::End(trailers) => {
                    assert!(buf.is_empty(), "left over: {buf:?}");
                    return Ok((data, trailers));
                }
                Decoded::NeedMore => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let wire = b"5\r\nhello\r\nA;name=value\r\n, world!!!\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = dechunk(wire, step).expect("valid");
            assert_eq!(data, b"hello, world!!!");
            assert!(trailers.is_none());
        }
        let wire = b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nx-more: a\r\n\r\n";
        for step in [1, 4, wire.len()] {
            let (data, trailers) = dechunk(wire, step).expect("valid");
            assert_eq!(data, b"abc");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-checksum"], "42");
            assert_eq!(trailers["x-more"], "a");
        }
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            assert!(dechunk(wire, wire.len()).is_err(), "{wire:?}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_lengths_must_agree() {
        assert_eq!(content_length(&headers(&[])), None);
        assert_eq!(
            content_length(&headers(&[("content-length", "12")])),
            Some(Ok(12))
        );
        assert_eq!(
            content_length(&headers(&[
                ("content-length", "7, 7"),
                ("content-length", "7")
            ])),
            Some(Ok(7))
        );
        for bad in ["7, 8", "-1", "", "1e3", "99999999999999999999"] {
            assert_eq!(
                content_length(&headers(&[("content-length", bad)])),
                Some(Err(())),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_a_final_chunked_coding_is_chunked() {
        assert!(is_chunked(&headers(&[("transfer-encoding", "chunked")])));
        assert!(is_chunked(&headers(&[(
            "transfer-encoding",
            "gzip, Chunked"
        )])));
        assert!(is_chunked(&headers(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(!is_chunked(&headers(&[(
            "transfer-encoding",
            "chunked, gzip"
        )])));
    }

    fn head(wire: &[u8], method: &Method) -> Result<Option<Head>, Error> {
        let mut buf = BytesMut::from(wire);
        parse_head(&mut buf, method, &mut None)
    }

    #[test]
    fn response_heads_and_their_framing() {
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.parts.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);

        // Informational answers are skipped.
        let h = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            &Method::POST,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.parts.status, StatusCode::CREATED);

        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);

        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::GET)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);

        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));

        // Neither length nor chunked: until close, and not reusable.
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);

        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(!h.keep_alive);

        let h = head(
            b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(h.keep_alive);

        let h = head(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(h.upgrade);
        assert!(!h.keep_alive);

        // A reason phrase of its own is kept.
        let h = head(
            b"HTTP/1.1 200 Fine\r\ncontent-length: 0\r\n\r\n",
            &Method::GET,
        )
        .expect("valid")
        .expect("complete");
        let reason = h
            .parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .expect("reason");
        assert_eq!(reason.as_bytes(), b"Fine");

        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::GET)
            .expect("valid so far")
            .is_none());
        assert!(head(
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            &Method::GET
        )
        .is_err());
        assert!(head(b"HTTQ/1.1 200 OK\r\n\r\n", &Method::GET).is_err());
    }

    #[test]
    fn header_values_share_the_read_buffer() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: one\r\nx-b: two\r\n\r\nrest"[..]);
        let mut recycled = Some(HeaderMap::with_capacity(1));
        let h = parse_head(&mut buf, &Method::GET, &mut recycled)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.parts.headers["x-a"], "one");
        assert_eq!(h.parts.headers["x-b"], "two");
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn write_queue_advances_across_buffers() {
        let mut out = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b""),
            Bytes::from_static(b"defg"),
        ];
        let mut written = 0;
        advance_queue(&mut out, &mut written, 2);
        assert_eq!((out.len(), written), (3, 2));
        advance_queue(&mut out, &mut written, 2);
        assert_eq!((out.len(), written), (1, 1));
        assert_eq!(&out[0][written..], b"efg");
        advance_queue(&mut out, &mut written, 3);
        assert!(out.is_empty());
        assert_eq!(written, 0);
    }
}
