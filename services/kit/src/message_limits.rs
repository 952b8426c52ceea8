//! Per-method caps on the size of one request message, read from gRPC's length prefix as the
//! request body streams in, before the message is gathered into memory. The transport's own
//! limit (`max_decoding_message_size`) is per service: the largest any method needs (a task's
//! input, a worker's report); with this, a `GetTask` or a heartbeat cannot be sent that large.
//! A message over its method's cap ends the call with RESOURCE_EXHAUSTED, naming the cap.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;

use crate::acl::Acl;

/// The cap of a method with none of its own: ample for every request that carries no input,
/// output, module or proof.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 10;

/// Tower layer that holds each method's request messages to its cap.
#[derive(Clone)]
pub struct MessageLimitLayer {
    acl: &'static Acl,
    caps: Arc<HashMap<&'static str, usize>>,
}

impl MessageLimitLayer {
    /// `caps`: (method, largest message in bytes) for the methods that need more than
    /// [`DEFAULT_MAX_MESSAGE`]; every other method (health and reflection included) gets that.
    pub fn new(acl: &'static Acl, caps: &[(&'static str, usize)]) -> MessageLimitLayer {
        MessageLimitLayer {
            acl,
            caps: Arc::new(caps.iter().copied().collect()),
        }
    }

    /// The cap of the method at `path`, and its name for the error.
    fn cap(&self, path: &str) -> (usize, &'static str) {
        match self.acl.method(path) {
            Some((name, _)) => (
                self.caps.get(name).copied().unwrap_or(DEFAULT_MAX_MESSAGE),
                name,
            ),
            None => (DEFAULT_MAX_MESSAGE, "this method"),
        }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`MessageLimitLayer`] wraps around the inner one.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    layer: MessageLimitLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (cap, method) = self.layer.cap(req.uri().path());
        self.inner.call(req.map(|body| {
            tonic::body::Body::new(CappedBody {
                inner: Box::pin(body),
                cap,
                method,
                header: [0; 5],
                header_len: 0,
                payload_left: 0,
            })
        }))
    }
}

/// A request body read through, frame header by frame header: each gRPC message is a 5-byte
/// header (a compression flag and a big-endian length) and that many bytes.
struct CappedBody<B> {
    inner: Pin<Box<B>>,
    cap: usize,
    method: &'static str,
    header: [u8; 5],
    header_len: usize,
    payload_left: usize,
}

impl<B> CappedBody<B> {
    /// Follows the framing through `data`; the length of a message over the cap, if one starts.
    fn scan(&mut self, mut data: &[u8]) -> Option<usize> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len =
                    u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes")) as usize;
                if len > self.cap {
                    return Some(len);
                }
                self.payload_left = len;
            }
        }
        None
    }
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        let frame = match frame {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(tonic::Status::from_error(e.into())))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref()
            && let Some(len) = self.scan(data)
        {
            return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                "a {} message of {len} bytes is over its cap of {} bytes",
                self.method, self.cap
            )))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(cap: usize) -> CappedBody<http_body_util::Empty<Bytes>> {
        CappedBody {
            inner: Box::pin(http_body_util::Empty::new()),
            cap,
            method: "M",
            header: [0; 5],
            header_len: 0,
            payload_left: 0,
        }
    }

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend(len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    /// Messages are followed across chunk boundaries of any size: one byte at a time, or
    /// several messages in one chunk; the first over the cap is caught at its header.
    #[test]
    fn frames_are_followed_across_chunks() {
        let stream: Vec<u8> = [frame(3), frame(10), frame(0), frame(10)].concat();
        for chunk in [1, 2, 5, 7, stream.len()] {
            let mut b = body(10);
            assert!(stream.chunks(chunk).all(|c| b.scan(c).is_none()), "{chunk}");
            assert_eq!((b.header_len, b.payload_left), (0, 0));
        }
        let over: Vec<u8> = [frame(3), frame(11)].concat();
        for chunk in [1, 3, over.len()] {
            let mut b = body(10);
            let caught = over.chunks(chunk).find_map(|c| b.scan(c));
            assert_eq!(caught, Some(11), "{chunk}");
        }
    }
}
