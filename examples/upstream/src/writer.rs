//! Puts a [`Response`] on the wire through hyper: a whole body with `content-length`, or a
//! [`PacedBody`] that hands hyper one piece at a time so each piece leaves in a write of its own.
//!
//! hyper's HTTP/1 dispatcher keeps polling a body for frames while they are ready and writes
//! them out together (one `writev`) when the body is pending. An LLM mock must instead send
//! each piece on its own, as a real streaming API does, so that a proxy sees the stream in
//! those pieces (a one-byte piece per write is every boundary there is). After each piece of a
//! paced body [`PacedBody`] therefore answers `Pending` once (waking itself at once): hyper
//! flushes that piece — and the chunk framing around it — before it gets the next. That is a
//! write and a trip through tokio's scheduler per piece: a 13-event chat stream costs the server
//! about 110 µs of CPU, where hyper left to batch the events would spend 35 µs and the
//! thread-per-connection server before this one spent 85 µs (its own write per event too;
//! measured with wrk on the shared 2-vCPU machine). A whole body is one piece and goes out with
//! its head.
//!
//! The pauses between pieces are timed by a thread of the body's own that sleeps and hands the
//! pieces over, not by tokio's timer: the timer counts whole milliseconds and rounds up, so a
//! 1 ms pause took about 2 ms and a one-byte-per-write stream twice as long as the thread-based
//! server before it (measured: 4.2 s instead of 2.2 s for 1,974 one-byte pieces).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use crate::response::{Body, Pieces, Response};

/// The error a cut body ends with: hyper then closes the connection without finishing the
/// response, as an upstream that dies mid-response does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutShort;

impl fmt::Display for CutShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response cut short on purpose (x-mock-cut-after)")
    }
}

impl std::error::Error for CutShort {}

/// A response body sent piece by piece; see the module documentation.
#[derive(Debug)]
pub struct PacedBody {
    /// Where the pieces come from (non-empty pieces only, already limited to `cut_after`).
    source: Source,
    /// `Some(n)`: `content-length: n` (all the pieces, even when cut); `None`: chunked.
    length: Option<u64>,
    /// After the last piece, fail instead of ending the body.
    cut: bool,
    /// Every piece has gone out.
    exhausted: bool,
    /// A piece was just handed to hyper: answer `Pending` once so that hyper flushes it.
    just_sent: bool,
    /// Pieces are to leave one write each (a paced body; a whole body is one piece anyway).
    separate: bool,
}

/// Where a [`PacedBody`]'s pieces come from.
#[derive(Debug)]
enum Source {
    /// All at hand, sent one after the other (still each in a write of its own).
    Ready(VecDeque<Bytes>),
    /// Handed over by a pacing thread, a pause apart; the channel closes after the last.
    Paced(mpsc::Receiver<Bytes>),
}

/// Starts a thread that hands `pieces` over `delay` apart (the first at once); `None` if no
/// thread can be started.
fn pace(pieces: VecDeque<Bytes>, delay: Duration) -> Option<mpsc::Receiver<Bytes>> {
    let (tx, rx) = mpsc::channel(1);
    let spawned = thread::Builder::new()
        .name("paced-body".into())
        .spawn(move || {
            for (i, piece) in pieces.into_iter().enumerate() {
                if i > 0 {
                    thread::sleep(delay);
                }
                // An error: the response was dropped (the client went away); stop.
                if tx.blocking_send(piece).is_err() {
                    return;
                }
            }
        });
    spawned.ok().map(|_| rx)
}

impl PacedBody {
    /// A body of `whole`, sent at once with its length.
    pub fn whole(whole: Bytes) -> Self {
        let length = whole.len() as u64;
        let pieces = Pieces {
            pieces: vec![whole],
            ..Pieces::default()
        };
        Self {
            separate: false,
            ..Self::new(pieces, Some(length))
        }
    }

    /// A body of `pieces`, chunked or with the length of all of them as they ask.
    pub fn paced(pieces: Pieces) -> Self {
        let length = (!pieces.chunked).then(|| pieces.pieces.iter().map(|p| p.len() as u64).sum());
        Self::new(pieces, length)
    }

    fn new(spec: Pieces, length: Option<u64>) -> Self {
        let limit = spec.cut_after.unwrap_or(usize::MAX);
        let pieces: VecDeque<Bytes> = spec
            .pieces
            .into_iter()
            .filter(|p| !p.is_empty())
            .take(limit)
            .collect();
        let source = if spec.delay.is_zero() || pieces.len() < 2 {
            Source::Ready(pieces)
        } else {
            // `Bytes` clones share their buffer: keeping a copy costs a few pointers.
            match pace(pieces.clone(), spec.delay) {
                Some(rx) => Source::Paced(rx),
                None => {
                    eprintln!("tollgate-upstream: no thread to pace a body; sending it unpaced");
                    Source::Ready(pieces)
                }
            }
        };
        Self {
            source,
            length,
            cut: spec.cut_after.is_some(),
            exhausted: false,
            just_sent: false,
            separate: true,
        }
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = CutShort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CutShort>>> {
        let this = &mut *self;
        if this.just_sent {
            // Let hyper write the piece it has before it gets another (see the module docs).
            this.just_sent = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !this.exhausted {
            let next = match &mut this.source {
                Source::Ready(pieces) => pieces.pop_front(),
                Source::Paced(rx) => match rx.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(next) => next,
                },
            };
            match next {
                Some(piece) => {
                    this.just_sent = this.separate;
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                None => this.exhausted = true,
            }
        }
        Poll::Ready(this.cut.then_some(Err(CutShort)))
    }

    fn is_end_stream(&self) -> bool {
        let empty = match &self.source {
            Source::Ready(pieces) => pieces.is_empty(),
            Source::Paced(_) => self.exhausted,
        };
        empty && !self.cut && !self.just_sent
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// `response` as hyper sends it (its delay is the caller's to wait).
pub fn to_hyper(response: Response) -> http::Response<PacedBody> {
    let body = match response.body {
        Body::Whole(bytes) => PacedBody::whole(bytes),
        Body::Paced(pieces) => PacedBody::paced(pieces),
    };
    let mut out = http::Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn spec(pieces: &[&str], cut_after: Option<usize>, chunked: bool) -> Pieces {
        Pieces {
            pieces: pieces.iter().map(|p| Bytes::from(p.to_string())).collect(),
            delay: Duration::ZERO,
            cut_after,
            chunked,
        }
    }

    #[tokio::test]
    async fn yields_each_non_empty_piece_as_its_own_frame() {
        let mut body = PacedBody::paced(spec(&["a", "", "bc"], None, true));
        assert_eq!(body.size_hint().exact(), None, "chunked: no length");
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames, ["a", "bc"]);
    }

    #[tokio::test]
    async fn a_cut_body_ends_in_an_error_after_its_pieces() {
        let mut body = PacedBody::paced(spec(&["one", "two", "three"], Some(2), false));
        assert_eq!(
            body.size_hint().exact(),
            Some(11),
            "the whole length is announced"
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "one"
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "two"
        );
        assert_eq!(body.frame().await.unwrap().unwrap_err(), CutShort);
    }

    #[tokio::test]
    async fn paced_pieces_come_a_pause_apart() {
        let mut pieces = spec(&["a", "b", "c"], None, true);
        pieces.delay = Duration::from_millis(30);
        let mut body = PacedBody::paced(pieces);
        let started = std::time::Instant::now();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames, ["a", "b", "c"]);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(60), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_whole_body_ends_with_its_one_piece() {
        let mut body = PacedBody::whole(Bytes::from_static(b"{}"));
        assert_eq!(body.size_hint().exact(), Some(2));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut body = Pin::new(&mut body);
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(body.is_end_stream(), "hyper ends it in the same write");
    }

    #[tokio::test]
    async fn answers_pending_once_after_each_piece() {
        let mut body = PacedBody::paced(spec(&["{}"], None, false));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut body = Pin::new(&mut body);
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(!body.is_end_stream(), "hyper must come back for the end");
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert!(body.is_end_stream());
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
    }
}
