//! Puts a [`Response`] on the wire through hyper: a whole body with `content-length`, or a
//! [`PacedBody`] that hands hyper one piece at a time so each piece leaves in a write of its own.
//!
//! hyper's HTTP/1 dispatcher keeps polling a body for frames while they are ready and writes
//! them out together (one `writev`) when the body is pending. An LLM mock must instead send
//! each piece on its own, as a real streaming API does, so that a proxy sees the stream in
//! those pieces (a one-byte piece per write is every boundary there is). After each piece
//! [`PacedBody`] therefore answers `Pending` once (waking itself at once): hyper flushes that
//! piece — and the chunk framing around it — before it gets the next.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

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
    /// What is left to send (non-empty pieces only, already limited to `cut_after`).
    pieces: VecDeque<Bytes>,
    /// `Some(n)`: `content-length: n` (all the pieces, even when cut); `None`: chunked.
    length: Option<u64>,
    /// Pause between pieces.
    delay: Duration,
    /// After the last piece, fail instead of ending the body.
    cut: bool,
    /// A piece has gone out; pause before the next.
    started: bool,
    /// A piece was just handed to hyper: answer `Pending` once so that hyper flushes it.
    just_sent: bool,
    /// The running pause, if any.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl PacedBody {
    /// A body of `whole`, sent at once with its length.
    pub fn whole(whole: Bytes) -> Self {
        let length = whole.len() as u64;
        Self::new(
            Pieces {
                pieces: vec![whole],
                ..Pieces::default()
            },
            Some(length),
        )
    }

    /// A body of `pieces`, chunked or with the length of all of them as they ask.
    pub fn paced(pieces: Pieces) -> Self {
        let length = (!pieces.chunked).then(|| pieces.pieces.iter().map(|p| p.len() as u64).sum());
        Self::new(pieces, length)
    }

    fn new(spec: Pieces, length: Option<u64>) -> Self {
        let limit = spec.cut_after.unwrap_or(usize::MAX);
        Self {
            pieces: spec
                .pieces
                .into_iter()
                .filter(|p| !p.is_empty())
                .take(limit)
                .collect(),
            length,
            delay: spec.delay,
            cut: spec.cut_after.is_some(),
            started: false,
            just_sent: false,
            sleep: None,
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
        if this.pieces.is_empty() {
            return Poll::Ready(this.cut.then_some(Err(CutShort)));
        }
        if this.started && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        match this.pieces.pop_front() {
            Some(piece) => {
                this.started = true;
                this.just_sent = true;
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty() && !self.cut && !self.just_sent
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
    async fn answers_pending_once_after_each_piece() {
        let mut body = PacedBody::whole(Bytes::from_static(b"{}"));
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
