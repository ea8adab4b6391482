//! The HTTP plumbing both fakes share: the serving loop, query-string decoding, Retry-After formatting. It uses hyper directly rather than `axum::serve`, so that a handler
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

/// Percent-decodes, with `+` as a space (query-string rules, as ASP.NET does). A `%` not followed by two hex
/// digits stays as it is.
pub fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Splits a query string into decoded `(name, value)` pairs, in order.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (pct_decode(k), pct_decode(v)),
            None => (pct_decode(p), String::new()),
        })
        .collect()
}

/// Seconds as a Retry-After value: up to three decimals, no trailing zeros (`2.128`, `1`, `0`).
pub fn fmt_secs(s: f64) -> String {
    let t = format!("{s:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() {
        "0".into()
    } else {
        t.to_string()
    }
}
