//! The HTTP serving loop both fakes share. It uses hyper directly rather than `axum::serve`, so that a handler
//! can answer a request by closing the connection without a response (fault injection).

use std::future::Future;

use axum::body::Body;
use axum::http::{Request, Response};

/// A handler's way of saying "drop this connection without answering".
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

/// Accepts connections until `stop` fires, answering each request with `handle`.
pub async fn serve<H, F>(listener: tokio::net::TcpListener, mut stop: tokio::sync::oneshot::Receiver<()>, handle: H)
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Dropped>> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        handle(req.map(Body::new))
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, svc).await;
                });
            }
        }
    }
}
