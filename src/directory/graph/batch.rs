//! JSON batching: up to 20 requests in one `POST /$batch`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::{GraphClient, GraphError, Kind};
use crate::http::{parse_error_value, request_id_from_headers, wall_clock, THROTTLE_INFORMATION};
use crate::retry::{parse_retry_after, server_now};

/// The most requests Graph takes in one `$batch`.
pub const MAX_BATCH_ITEMS: usize = 20;

/// One request inside a `$batch`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    /// Unique within the batch.
    pub id: String,
    /// `GET`, `POST`, `PATCH`, `DELETE`.
    pub method: Method,
    /// Relative to Graph's base URL, starting with `/`, already percent-encoded: e.g.
    /// `/groups/{id}/members/{uid}/$ref`.
    pub url: String,
    /// A JSON body; when present the item is sent with `Content-Type: application/json`.
    pub body: Option<Value>,
}

/// The error envelope of a failed batch item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphErrorBody {
    /// `error.code` (may be empty).
    pub code: String,
    /// `error.message` (may be empty).
    pub message: String,
    /// Graph's `request-id`: the item's `request-id` header, else `error.innerError.request-id`.
    pub request_id: Option<String>,
}

impl std::fmt::Display for GraphErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.code, self.message)?,
            (false, true) => f.write_str(&self.code)?,
            (true, false) => f.write_str(&self.message)?,
            (true, true) => f.write_str("no error details")?,
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id})")?;
        }
        Ok(())
    }
}

/// The error of a read sent inside a `$batch` (`GET {path}`) that came back with `status`, as the
/// [`ServiceError`](crate::http::ServiceError) every caller reports; `error` is the item's envelope, when any.
pub fn batch_read_error(path: String, status: u16, error: Option<GraphErrorBody>) -> crate::http::ServiceError {
    crate::http::ServiceError {
        service: "Microsoft Graph",
        method: "GET".into(),
        path,
        status,
        code: error.as_ref().map(|e| e.code.clone()).filter(|c| !c.is_empty()),
        message: error.as_ref().map(|e| e.message.clone()).filter(|m| !m.is_empty()),
        request_id: error.and_then(|e| e.request_id),
        client_request_id: String::new(),
        retry_after: None,
        hint: None,
    }
}

/// The answer to one [`BatchItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItemResponse {
    /// The item's id.
    pub id: String,
    /// Its HTTP status (204 for a successful `$ref` add or remove, 429 when throttled, …).
    pub status: u16,
    /// The item's `Retry-After`, when Graph sent one.
    pub retry_after: Option<Duration>,
    /// The error envelope, for statuses of 400 and above.
    pub error: Option<GraphErrorBody>,
    /// The item's own `request-id` header, when Graph gave one.
    pub request_id: Option<String>,
    /// Why Graph throttled the item (`x-ms-throttle-information`), when it said.
    pub throttle_information: Option<String>,
}

/// The answer to a `$batch` request: one answer per item, and the request's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReply {
    /// One answer per item, in the order of the items sent.
    pub items: Vec<BatchItemResponse>,
    /// The `client-request-id` writeback sent with the `$batch`.
    pub client_request_id: String,
    /// Graph's `request-id` of the `$batch`.
    pub request_id: Option<String>,
}

/// A batch answer with the body kept, for this module's own reads.
#[derive(Debug, Clone)]
pub(super) struct RawItemResponse {
    pub response: BatchItemResponse,
    pub body: Value,
}

/// A whole batch answer with the bodies kept.
#[derive(Debug, Clone)]
pub(super) struct RawBatch {
    pub items: Vec<RawItemResponse>,
    pub client_request_id: String,
    pub request_id: Option<String>,
}

impl GraphClient {
    /// Sends up to [`MAX_BATCH_ITEMS`] requests in one `POST {graph}/$batch`, once (no retries: the caller
    /// retries, as `apply`'s executor does, with [`crate::retry`]), and returns one answer per item, in the order
    /// of `items`, with the request's ids. An error status of the POST itself is a [`GraphError::Service`]
    /// carrying its `Retry-After`.
    pub async fn batch(&self, items: Vec<BatchItem>) -> Result<BatchReply, GraphError> {
        let raw = self.batch_raw(&items, Kind::Batch).await?;
        Ok(BatchReply {
            items: raw.items.into_iter().map(|r| r.response).collect(),
            client_request_id: raw.client_request_id,
            request_id: raw.request_id,
        })
    }

    pub(super) async fn batch_raw(&self, items: &[BatchItem], kind: Kind) -> Result<RawBatch, GraphError> {
        if items.is_empty() {
            return Ok(RawBatch { items: Vec::new(), client_request_id: String::new(), request_id: None });
        }
        if items.len() > MAX_BATCH_ITEMS {
            return Err(GraphError::InvalidRequest(format!(
                "a $batch takes at most {MAX_BATCH_ITEMS} requests, not {}",
                items.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for item in items {
            if !seen.insert(item.id.as_str()) {
                return Err(GraphError::InvalidRequest(format!("$batch item id '{}' is used twice", item.id)));
            }
            if !item.url.starts_with('/') {
                return Err(GraphError::InvalidRequest(format!(
                    "$batch item '{}': the url must be relative to Graph and start with '/'",
                    item.id
                )));
            }
        }
        let requests: Vec<Value> = items
            .iter()
            .map(|item| {
                let mut request = json!({ "id": item.id, "method": item.method.as_str(), "url": item.url });
                if let Some(body) = &item.body {
                    request["headers"] = json!({ "Content-Type": "application/json" });
                    request["body"] = body.clone();
                }
                request
            })
            .collect();
        let body = json!({ "requests": requests });
        let url = self.url("/$batch")?;
        let sent = self.execute(Method::POST, &url, kind, &[], Some(&body)).await?;
        if !sent.response.status().is_success() {
            return Err(self.fail(&Method::POST, sent, "lacks a permission one of the batched requests needs").await);
        }
        let client_request_id = sent.client_request_id.clone();
        let request_id = request_id_from_headers(sent.response.headers());
        let date = sent.response.headers().get("date").and_then(|d| d.to_str().ok()).map(str::to_string);
        let now = server_now(date.as_deref(), wall_clock().into());
        let answer = super::read_json(sent, &url).await?;
        let protocol = |reason: String| GraphError::Protocol { what: "POST /$batch".into(), reason };
        let mut by_id: HashMap<String, RawItemResponse> = HashMap::new();
        for item in answer.get("responses").and_then(Value::as_array).into_iter().flatten() {
            let id = match item.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(protocol("a response without an id".into())),
            };
            let status = item
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .ok_or_else(|| protocol(format!("response '{id}' has no status")))?;
            let headers = item.get("headers").and_then(Value::as_object);
            let header = |name: &str| {
                headers.and_then(|h| {
                    h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                })
            };
            let retry_after = header("Retry-After").and_then(|v| parse_retry_after(&v, now));
            let body = item.get("body").cloned().unwrap_or(Value::Null);
            let error = (status >= 400).then(|| {
                let parsed = parse_error_value(&body);
                GraphErrorBody {
                    code: parsed.code.unwrap_or_default(),
                    message: parsed.message.unwrap_or_default(),
                    request_id: header("request-id").or(parsed.request_id),
                }
            });
            let response = BatchItemResponse {
                id: id.clone(),
                status,
                retry_after,
                error,
                request_id: header("request-id"),
                throttle_information: header(THROTTLE_INFORMATION),
            };
            by_id.insert(id, RawItemResponse { response, body });
        }
        let items = items
            .iter()
            .map(|item| by_id.remove(&item.id).ok_or_else(|| protocol(format!("no response for item '{}'", item.id))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RawBatch { items, client_request_id, request_id })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{client, serve};
    use super::*;
    use axum::routing::post;
    use axum::Json;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn batch_sends_documented_shape_and_returns_items_in_order() {
        let seen = Arc::new(Mutex::new(Value::Null));
        let s = seen.clone();
        let router = axum::Router::new().route(
            "/v1.0/$batch",
            post(move |Json(body): Json<Value>| {
                let s = s.clone();
                async move {
                    *s.lock().unwrap() = body;
                    // Out of order, as Graph may answer.
                    Json(json!({"responses": [
                        {"id": "2", "status": 429, "headers": {"Retry-After": "0.05"},
                         "body": {"error": {"code": "TooManyRequests", "message": "Please retry again later.",
                                  "innerError": {"request-id": "rid-2"}}}},
                        {"id": "1", "status": 204, "headers": {}, "body": null}
                    ]}))
                }
            }),
        );
        let base = serve(router).await;
        let client = client(&base);
        let items = vec![
            BatchItem {
                id: "1".into(),
                method: Method::POST,
                url: "/groups/g/members/$ref".into(),
                body: Some(json!({"@odata.id": "https://graph.microsoft.com/v1.0/directoryObjects/u"})),
            },
            BatchItem { id: "2".into(), method: Method::DELETE, url: "/groups/g/members/u2/$ref".into(), body: None },
        ];
        let reply = client.batch(items).await.unwrap();
        assert!(uuid::Uuid::parse_str(&reply.client_request_id).is_ok());
        let out = reply.items;
        assert_eq!(
            out[0],
            BatchItemResponse {
                id: "1".into(),
                status: 204,
                retry_after: None,
                error: None,
                request_id: None,
                throttle_information: None
            }
        );
        assert_eq!(out[1].status, 429);
        assert_eq!(out[1].retry_after, Some(Duration::from_millis(50)));
        let err = out[1].error.as_ref().unwrap();
        assert_eq!((err.code.as_str(), err.request_id.as_deref()), ("TooManyRequests", Some("rid-2")));
        let sent = seen.lock().unwrap().clone();
        assert_eq!(sent["requests"][0]["headers"]["Content-Type"], "application/json");
        assert_eq!(sent["requests"][0]["method"], "POST");
        assert!(sent["requests"][1].get("headers").is_none());
        assert_eq!(client.counts().batch, 1);
    }

    #[tokio::test]
    async fn batch_refuses_bad_input() {
        let client = client(&reqwest::Url::parse("http://127.0.0.1:9/v1.0").unwrap());
        let item = |id: &str| BatchItem { id: id.into(), method: Method::GET, url: "/users".into(), body: None };
        assert!(client.batch((0..21).map(|i| item(&i.to_string())).collect()).await.is_err());
        assert!(client.batch(vec![item("a"), item("a")]).await.is_err());
        assert_eq!(client.counts().total, 0);
    }
}
