//! Request framing checked on the raw bytes, below hyper.
//!
//! hyper resolves some ambiguous framings instead of refusing them: with
//! both `Content-Length` and `Transfer-Encoding` it drops the length and
//! reads chunked; it merges repeated equal `Content-Length` lines; it takes
//! any coding list that ends in `chunked`. What it hands on is safe, but the
//! original header lines are gone, so the gateway cannot refuse them. A
//! proxy in front of us might have read the same bytes the other way, which
//! is how requests are smuggled, so we refuse them outright.
//!
//! Each head is tokenized by `httparse`, the parser hyper itself uses,
//! with the same settings and header count: a second tokenizer could read
//! other header lines out of the same bytes (a folded line, a bare CR, a
//! space before a colon), and that disagreement is itself a way to smuggle.
//! Only the rules on the framing headers are ours.
//!
//! [`Guarded`] wraps a connection and reads every request head as it goes
//! past, then pushes one [`Verdict`] per head; the gateway takes one per
//! request, in order. To find the next head it skips request bodies: exact
//! for `Content-Length` bodies; after a chunked body (or `CONNECT`) it stops
//! scanning and the verdict tells the gateway to close the connection after
//! that response, so the two parsers can never disagree about where a head
//! starts. It also stops for good once the connection switches protocols
//! ([`Verdicts::switched`]) or a head outgrows the head limit: that head's
//! verdict is [`Verdict::TooLarge`] (431), should hyper, which checks its
//! own limit only between reads, have taken it whole.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads scanned ahead of the requests hyper has dispatched. A client that
/// pipelines more than this gets its surplus requests refused.
const MAX_PENDING: usize = 64;

/// What the scan found in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unambiguous framing.
    Ok,
    /// Unambiguous, but the scan cannot follow the body (chunked, or a
    /// tunnel via `CONNECT`): the connection must close after the response.
    OkThenClose,
    /// Ambiguous or unsupported framing: refuse with 400 and close.
    Refuse(&'static str),
    /// A head longer than the limit: refuse with 431 and close. (hyper
    /// checks its own limit only between reads, so one read can bring it a
    /// longer head whole.)
    TooLarge(usize),
}

/// The verdicts of one connection, shared by its reader and its requests.
#[derive(Debug, Default)]
pub struct Verdicts {
    pending: Mutex<VecDeque<Verdict>>,
    switched: AtomicBool,
    /// HTTP/2's: frames carry lengths, there is nothing to scan, and every
    /// request's framing is its own.
    unscanned: bool,
}

impl Verdicts {
    /// The verdicts of an HTTP/2 connection: every one [`Verdict::Ok`].
    pub fn unscanned() -> Self {
        Verdicts {
            unscanned: true,
            ..Verdicts::default()
        }
    }

    /// The verdict on the request being handled (the oldest not taken).
    /// None left means the scan gave up ahead of hyper, which only a client
    /// pipelining far ahead causes: refused.
    pub fn next(&self) -> Verdict {
        if self.unscanned {
            return Verdict::Ok;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .pop_front()
            .unwrap_or(Verdict::Refuse("too many pipelined requests"))
    }

    /// The connection now carries another protocol: stop scanning.
    pub fn switched(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }

    fn push(&self, verdict: Verdict) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.push_back(verdict);
        true
    }
}

/// Where the scan is in the byte stream.
#[derive(Debug)]
enum Scan {
    /// Collecting a head (leading empty lines skipped).
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Body(u64),
    /// Not scanning any more.
    Off,
}

/// A connection whose request heads are checked as they are read.
pub struct Guarded<T> {
    io: T,
    scan: Scan,
    verdicts: std::sync::Arc<Verdicts>,
    max_head: usize,
    /// Between heads, a CR was skipped and its LF not yet seen.
    lead_cr: bool,
}

impl<T> Guarded<T> {
    /// Wraps `io`. A head longer than `max_head` bytes gets
    /// [`Verdict::TooLarge`], and the scan stops there.
    pub fn new(io: T, verdicts: std::sync::Arc<Verdicts>, max_head: usize) -> Self {
        Guarded {
            io,
            scan: Scan::Head(Vec::new()),
            verdicts,
            max_head,
            lead_cr: false,
        }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.scan {
                Scan::Off => return,
                Scan::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.scan = Scan::Head(Vec::new());
                    }
                }
                Scan::Head(buf) => {
                    if buf.is_empty() {
                        // Empty lines before a request line are ignored
                        // (RFC 9112 2.2), by hyper as by us; as httparse
                        // has it, a CR there must come before a LF.
                        let mut skip = 0;
                        for b in data {
                            match (self.lead_cr, b) {
                                (true, b'\n') => self.lead_cr = false,
                                (true, _) => {
                                    self.verdicts
                                        .push(Verdict::Refuse("malformed request head"));
                                    self.scan = Scan::Off;
                                    return;
                                }
                                (false, b'\r') => self.lead_cr = true,
                                (false, b'\n') => {}
                                (false, _) => break,
                            }
                            skip += 1;
                        }
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let old = buf.len();
                    let take = data.len().min(self.max_head + 1 - old);
                    buf.extend_from_slice(&data[..take]);
                    match head_end(buf, old.saturating_sub(2)) {
                        Some(end) if end <= self.max_head => {
                            let (verdict, next) = judge(&buf[..end]);
                            data = &data[end - old..];
                            self.scan = if self.verdicts.push(verdict) {
                                next
                            } else {
                                Scan::Off
                            };
                        }
                        _ if buf.len() > self.max_head => {
                            self.verdicts.push(Verdict::TooLarge(self.max_head));
                            self.scan = Scan::Off;
                        }
                        _ => return,
                    }
                }
            }
        }
    }
}

/// The end of a head (just past its empty line) in `buf`, searching for the
/// line feed before it from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// The verdict on one complete head, and where the scan goes next.
///
/// The head is tokenized by `httparse`, hyper's own parser, with hyper's
/// default settings and its header count, so that the two can never read
/// different header lines out of the same bytes. A head it rejects, hyper
/// rejects too (and answers 400 itself, closing): refused.
fn judge(head: &[u8]) -> (Verdict, Scan) {
    let refuse = |why| (Verdict::Refuse(why), Scan::Off);
    let mut headers = [httparse::EMPTY_HEADER; super::MAX_REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        // The end found by `head_end` is the one httparse finds: anything
        // else means the two disagree about where the head stops.
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => return refuse("too many header lines"),
        Ok(_) | Err(_) => return refuse("malformed request head"),
    }
    let connect = request.method == Some("CONNECT");
    let http_10 = request.version == Some(0);
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for header in request.headers.iter() {
        // httparse has trimmed the value's surrounding spaces and tabs, as
        // hyper sees it.
        let (name, value) = (header.name.as_bytes(), header.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.push(value);
        }
    }
    if !lengths.is_empty() && !codings.is_empty() {
        return refuse("both Content-Length and Transfer-Encoding");
    }
    if !codings.is_empty() && http_10 {
        // hyper refuses it too: HTTP/1.0 has no transfer codings.
        return refuse("Transfer-Encoding on HTTP/1.0");
    }
    if codings.len() > 1 {
        return refuse("repeated Transfer-Encoding");
    }
    if let Some(coding) = codings.first() {
        let list: Vec<&[u8]> = coding
            .split(|b| *b == b',')
            .map(|c| c.trim_ascii())
            .collect();
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        return match list.as_slice() {
            [only] if chunked(only) => (Verdict::OkThenClose, Scan::Off),
            many if many.iter().filter(|c| chunked(c)).count() > 1 => {
                refuse("repeated transfer coding")
            }
            _ => refuse("unsupported transfer coding (only chunked is accepted)"),
        };
    }
    if lengths.len() > 1 {
        return refuse("repeated Content-Length");
    }
    let length = match lengths.first() {
        None => 0,
        Some(v) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) => n,
                None => return refuse("malformed Content-Length"),
            }
        }
        Some(_) => return refuse("malformed Content-Length"),
    };
    if connect {
        return (Verdict::OkThenClose, Scan::Off);
    }
    let next = match length {
        0 => Scan::Head(Vec::new()),
        n => Scan::Body(n),
    };
    (Verdict::Ok, next)
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if !matches!(this.scan, Scan::Off) {
            if this.verdicts.switched.load(Ordering::Relaxed) {
                this.scan = Scan::Off;
            } else {
                this.feed(&buf.filled()[before..]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
