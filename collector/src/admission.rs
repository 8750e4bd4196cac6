//! Admission of OTLP requests against the memory budget, before and while their bodies are read.
//!
//! A request reserves its `Content-Length` (at most `ingest.max_body_bytes`) before a byte of its body is read,
//! and its body grows the reservation as frames arrive ([`BudgetedBody`]), twice over: both transports collect the
//! frames into one contiguous buffer, so at the peak the frames and their copy coexist. The handler sets the
//! reservation to the collected body once it has it. So a request whose body would pass the
//! ceiling is refused with the OTLP retryable answer instead of being buffered. gRPC requests carry no length, so
//! they are admitted frame by frame.
//!
//! A request that can never fit is refused for good instead (413 / RESOURCE_EXHAUSTED without `RetryInfo`, see
//! [`IngestError::NeverFits`]): a `Content-Length` past `ingest.max_body_bytes`, or a body that with its decoding
//! needs more than the whole budget. Retrying it could only fail again, so OTLP clients must not be told to. The reservation then travels with the request ([`RequestMemory`], a request
//! extension) through decompression and normalisation into the write buffer (see [`crate::receiver`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tailscope_core::memory::{MemoryBudget, MemoryError, Reservation};

use crate::error::IngestError;

/// Body bytes reserved per byte received: the frames, and the contiguous buffer the transport copies them into.
const COLLECT_COPIES: usize = 2;

/// The memory a request holds while it is received and stored. Cloned into the request's extensions.
#[derive(Clone)]
pub struct RequestMemory {
    state: Arc<State>,
}

struct State {
    reservation: Mutex<Reservation>,
    /// `ingest.max_body_bytes`: the most a refused body is drained of.
    max_body_bytes: usize,
    /// Set when the body was refused: the transport replaces whatever the handler answered with the retryable
    /// refusal.
    refused: Mutex<Option<MemoryError>>,
}

impl RequestMemory {
    /// Admits a request: reserves its announced length. Refuses for good a length past `max_body_bytes`
    /// ([`IngestError::TooLarge`]) and one whose peak (the received frames, or `least_peak` of the length: the
    /// least its decoding holds) passes the whole budget ([`IngestError::NeverFits`]); refuses for now one that does
    /// not fit beside what is reserved ([`IngestError::MemoryLimit`]).
    pub fn admit(
        budget: &MemoryBudget,
        headers: &HeaderMap,
        max_body_bytes: usize,
        least_peak: impl FnOnce(usize) -> usize,
    ) -> Result<Self, IngestError> {
        let announced = announced_length(headers);
        if announced.is_some_and(|len| len > max_body_bytes) {
            return Err(IngestError::TooLarge { limit: max_body_bytes });
        }
        let announced = announced.unwrap_or(0);
        let frames = announced.saturating_mul(COLLECT_COPIES);
        let least = least_peak(announced).max(frames);
        if least > budget.room() {
            return Err(IngestError::NeverFits(MemoryError {
                requested: least,
                purpose: format!("a request body of {announced} bytes (received, then decoded)"),
                used: budget.used(),
                limit: budget.limit(),
                held: 0,
                room: budget.room(),
            }));
        }
        let reservation = budget.try_reserve(frames, &"a request body")?;
        let state = State { reservation: Mutex::new(reservation), max_body_bytes, refused: Mutex::new(None) };
        Ok(RequestMemory { state: Arc::new(state) })
    }

    /// Takes the reservation out (leaving an empty one), to carry it through decompression and normalisation.
    pub fn take(&self) -> Reservation {
        let mut held = self.state.reservation.lock();
        let empty = held.budget().empty();
        std::mem::replace(&mut *held, empty)
    }

    /// Gives a reservation taken with [`Self::take`] back to the request (the handler takes it again).
    pub fn restore(&self, reservation: Reservation) {
        let mut held = self.state.reservation.lock();
        let previous = std::mem::replace(&mut *held, reservation);
        // Whatever was held meanwhile (nothing, normally) stays held until the request ends.
        if previous.size() > 0 {
            let extra = previous.size();
            drop(previous);
            let total = held.size() + extra;
            held.force_resize(total);
        }
    }

    /// The refusal of the body, if it was refused.
    pub fn refusal(&self) -> Option<MemoryError> {
        self.state.refused.lock().clone()
    }

    /// Wraps a request body so that its frames are reserved as they arrive.
    pub fn wrap<B>(&self, body: B) -> BudgetedBody<B> {
        BudgetedBody { inner: body, memory: self.clone(), received: 0, draining: None }
    }
}

/// The body length a request announces (`Content-Length`), if it does. hyper refuses malformed and conflicting
/// values before a request gets here.
pub fn announced_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Reads a refused request's body to its end (at most `max_body_bytes`), keeping nothing, so that an HTTP/1.1
/// client still sending it reads the refusal instead of a reset connection.
pub async fn drain<B>(mut body: B, max_body_bytes: usize)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut drained = 0usize;
    while drained <= max_body_bytes {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// A content encoding request bodies may come in (OTLP/HTTP `Content-Encoding`, gRPC's compressed flag for gzip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `gzip` (and `x-gzip`).
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw deflate as some clients send it (told apart by the zlib
    /// header, as browsers do).
    Deflate,
    /// `zstd` (RFC 8878), with a window of at most 8 MiB as RFC 9659 requires of HTTP's zstd.
    Zstd,
}

impl Codec {
    /// The codec a `Content-Encoding` value names: `None` for none (`identity`, or an empty value).
    pub fn from_content_encoding(value: &str) -> Result<Option<Codec>, IngestError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Codec::Gzip)),
            "deflate" => Ok(Some(Codec::Deflate)),
            "zstd" => Ok(Some(Codec::Zstd)),
            _ => Err(IngestError::UnsupportedEncoding(value.to_string())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Deflate => "deflate",
            Codec::Zstd => "zstd",
        }
    }
}

/// The largest zstd window accepted, as a power of two: 8 MiB, RFC 9659's bound for HTTP's `zstd` coding. The
/// decoder refuses a frame that asks for more instead of allocating it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// What a zstd decoder holds besides the output: its window at the bound, two 128 KiB blocks and its own state.
const ZSTD_DECODER_BYTES: usize = (1 << ZSTD_WINDOW_LOG_MAX) + 384 * 1024;

/// Whether `stream` starts with a zlib header (RFC 1950: deflate, a window of at most 32 KiB, a check value that
/// makes the first two bytes a multiple of 31). A raw deflate stream rarely does.
fn is_zlib(stream: &[u8]) -> bool {
    match stream {
        [cmf, flg, ..] => cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Inflates `compressed`, encoded by `codec`, appending at most `limit` bytes to `out` (past that: the request can
/// never be accepted, [`IngestError::TooLarge`]), and reserving what it appends in `reservation` before it is
/// allocated, in doubling steps: a small body may inflate to `limit`, and a bomb must stop at the ceiling instead
/// of growing the process. A step never asks for more than the whole budget could give, so a refusal means "not
/// now" ([`IngestError::MemoryLimit`]) unless the output alone cannot fit ([`IngestError::NeverFits`]). A zstd
/// decoder's window is reserved too, for as long as it lives.
pub fn inflate(
    codec: Codec,
    compressed: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    reservation: &mut Reservation,
) -> Result<(), IngestError> {
    match codec {
        Codec::Gzip => inflate_from(flate2::read::GzDecoder::new(compressed), codec, limit, out, reservation),
        Codec::Deflate if is_zlib(compressed) => {
            inflate_from(flate2::read::ZlibDecoder::new(compressed), codec, limit, out, reservation)
        }
        Codec::Deflate => inflate_from(flate2::read::DeflateDecoder::new(compressed), codec, limit, out, reservation),
        Codec::Zstd => {
            reservation.try_grow(ZSTD_DECODER_BYTES, &"a zstd decoder's window")?;
            let inflated = zstd::stream::read::Decoder::with_buffer(compressed)
                .and_then(|mut decoder| decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map(|()| decoder))
                .map_err(|e| malformed(codec, e))
                .and_then(|decoder| inflate_from(decoder, codec, limit, out, reservation));
            // The decoder is gone.
            reservation.shrink(ZSTD_DECODER_BYTES);
            inflated
        }
    }
}

/// A body its decoder cannot read.
fn malformed(codec: Codec, e: std::io::Error) -> IngestError {
    let window = if codec == Codec::Zstd { ", or its window is larger than 8 MiB (RFC 9659's limit)" } else { "" };
    IngestError::Malformed {
        format: codec.name(),
        detail: format!("{e}; the body does not match its {} content encoding{window}", codec.name()),
    }
}

/// [`inflate`] with the decoder made.
fn inflate_from(
    decoder: impl std::io::Read,
    codec: Codec,
    limit: usize,
    out: &mut Vec<u8>,
    reservation: &mut Reservation,
) -> Result<(), IngestError> {
    use std::io::Read;
    const MIN_STEP: usize = 64 * 1024;
    let start = out.len();
    let mut decoder = decoder.take(limit as u64 + 1);
    loop {
        if out.len() == out.capacity() {
            let room_in_budget = reservation.budget().limit().saturating_sub(reservation.size()).max(MIN_STEP);
            let more = out.capacity().max(MIN_STEP).min(limit + 1 - (out.len() - start)).min(room_in_budget);
            reservation.try_grow(more, &"inflating a request body")?;
            out.reserve_exact(more);
        }
        let room = (out.capacity() - out.len()) as u64;
        let read = (&mut decoder).take(room).read_to_end(out).map_err(|e| malformed(codec, e))?;
        if out.len() - start > limit {
            return Err(IngestError::TooLarge { limit });
        }
        if read == 0 {
            return Ok(());
        }
    }
}

/// A request body whose data frames are reserved in the budget as they arrive; past the ceiling it ends with an
/// error, and the request is answered with the retryable refusal (see [`RequestMemory::refusal`]).
pub struct BudgetedBody<B> {
    inner: B,
    memory: RequestMemory,
    received: usize,
    /// After a refusal: the refusal, and the bytes drained since (read and dropped, see [`drain`]).
    draining: Option<(MemoryError, usize)>,
}

impl<B> Body for BudgetedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((refusal, drained)) = &mut this.draining {
            // Read the rest and drop it, then end with the refusal (see `drain`).
            loop {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) if *drained <= this.memory.state.max_body_bytes => {
                        *drained += frame.data_ref().map_or(0, |d| d.remaining());
                    }
                    Poll::Pending => return Poll::Pending,
                    _ => {
                        let e: Self::Error = Box::new(refusal.clone());
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.remaining();
                    let needed = this.received.saturating_mul(COLLECT_COPIES);
                    let mut held = this.memory.state.reservation.lock();
                    if needed > held.size() {
                        let more = needed - held.size();
                        if let Err(e) = held.try_grow(more, &"a request body") {
                            drop(held);
                            *this.memory.state.refused.lock() = Some(e.clone());
                            this.draining = Some((e, 0));
                            // Dropped: the part received so far is released with the request's reservation.
                            drop(frame);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
