//! Reading objects by id before `apply` writes: users with `$filter=id in (…)`, and the deleted items.
//!
//! Both use only what the admin role already has (GroupMember.ReadWrite.All + User.Read.All);
//! `directoryObjects/getByIds` would need Directory.Read.All and is never used.
//!
//! - Users: `GET /users?$filter=id in ('…',…)&$select=…`, at most [`IDS_PER_FILTER`] ids a sub-request (Graph's
//!   limit for an `in` list) and [`MAX_BATCH_ITEMS`] sub-requests a `$batch`, so 300 ids a request.
//! - Deleted items: `GET /directory/deletedItems/{id}` per id, 20 to a `$batch`. A deleted user comes back with
//!   `@odata.type` `#microsoft.graph.user`; an id that is not among the deleted items gets 404.
//!
//! Throttled or failing sub-requests (429, 5xx) are sent again after the longest `Retry-After`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::batch::{batch_read_error, BatchItem, RawItemResponse, MAX_BATCH_ITEMS};
use super::users::{user_from_json, USER_SELECT};
use super::{str_field, GraphClient, GraphError, Kind};
use crate::directory::{DirectoryUser, MemberKind};
use crate::http::encode_query_value;
use crate::identity::ObjectId;

/// The most ids in one `id in (…)` filter.
pub const IDS_PER_FILTER: usize = 15;

/// What `GET /directory/deletedItems/{id}` said about an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletedItem {
    /// A deleted user.
    User {
        /// Its userPrincipalName (Entra prefixes a deleted user's UPN with its id).
        upn: Option<String>,
        /// Its displayName.
        display_name: Option<String>,
    },
    /// A deleted object of another kind.
    Other(MemberKind),
    /// Not among the deleted items (404).
    NotFound,
    /// Graph refused to say (403): not something the admin's permissions can see.
    Forbidden,
}

impl GraphClient {
    /// The users among `ids`, read with `$filter=id in (…)`; ids that are not (visible) users are simply absent.
    pub async fn users_by_id(&self, ids: &[ObjectId]) -> Result<Vec<DirectoryUser>, GraphError> {
        let items: Vec<BatchItem> = ids
            .chunks(IDS_PER_FILTER)
            .enumerate()
            .map(|(i, chunk)| {
                let list = chunk.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
                BatchItem {
                    id: i.to_string(),
                    method: Method::GET,
                    url: format!(
                        "/users?$filter={}&$select={USER_SELECT}",
                        encode_query_value(&format!("id in ({list})"))
                    ),
                    body: None,
                }
            })
            .collect();
        let mut users = Vec::new();
        for (_, answer) in self.batched_gets(items, "GET /users (by id)").await? {
            for value in answer.body.get("value").and_then(Value::as_array).into_iter().flatten() {
                users.push(
                    user_from_json(value)
                        .map_err(|reason| GraphError::Protocol { what: "GET /users (by id)".into(), reason })?,
                );
            }
        }
        Ok(users)
    }

    /// What each of `ids` is among the tenant's deleted items.
    pub async fn deleted_items(&self, ids: &[ObjectId]) -> Result<Vec<(ObjectId, DeletedItem)>, GraphError> {
        let items: Vec<BatchItem> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| BatchItem {
                id: i.to_string(),
                method: Method::GET,
                url: format!("/directory/deletedItems/{id}?$select=id,userPrincipalName,displayName"),
                body: None,
            })
            .collect();
        let answers = self.batched_gets(items, "GET /directory/deletedItems").await?;
        Ok(answers
            .into_iter()
            .filter_map(|(index, answer)| {
                let id = ids.get(index)?.clone();
                let item = match answer.response.status {
                    404 => DeletedItem::NotFound,
                    403 => DeletedItem::Forbidden,
                    _ => match str_field(&answer.body, "@odata.type").map(|t| MemberKind::from_type_name(&t)) {
                        Some(MemberKind::User) => DeletedItem::User {
                            upn: str_field(&answer.body, "userPrincipalName"),
                            display_name: str_field(&answer.body, "displayName"),
                        },
                        Some(kind) => DeletedItem::Other(kind),
                        None => DeletedItem::Other(MemberKind::Other("unknown".into())),
                    },
                };
                Some((id, item))
            })
            .collect())
    }

    /// Sends GET sub-requests, 20 to a `$batch`, retrying 429 and 5xx items after the longest `Retry-After`.
    /// Returns each item's index (its position in `items`) and answer; 2xx, 403 and 404 are answers, any other
    /// status is an error.
    async fn batched_gets(
        &self,
        items: Vec<BatchItem>,
        what: &str,
    ) -> Result<Vec<(usize, RawItemResponse)>, GraphError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH_ITEMS) {
            let mut pending: Vec<BatchItem> = chunk.to_vec();
            let started = Instant::now();
            let policy = self.retry_policy().clone();
            let mut round = 0u32;
            while !pending.is_empty() {
                round += 1;
                let answers = match self.batch_raw(&pending, Kind::LookupBatch).await {
                    Ok(batch) => batch.items,
                    Err(e) => {
                        // The `$batch` itself was throttled, failed with 5xx or got no answer: send it again.
                        let retry_after = match &e {
                            GraphError::Service(s)
                                if crate::retry::classify(s.status) != crate::retry::Verdict::Final =>
                            {
                                Some(s.retry_after)
                            }
                            GraphError::Http(crate::http::HttpError::Transport { .. }) => Some(None),
                            _ => None,
                        };
                        match retry_after.and_then(|after| policy.next_wait(round, started.elapsed(), after)) {
                            Some(wait) => {
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            None => return Err(e),
                        }
                    }
                };
                let mut again = Vec::new();
                let mut wait = Duration::ZERO;
                for (item, answer) in pending.iter().zip(answers) {
                    let index = item.id.parse::<usize>().unwrap_or(usize::MAX);
                    match answer.response.status {
                        200..=299 | 403 | 404 => out.push((index, answer)),
                        429 | 500 | 502 | 503 | 504 => {
                            wait = wait.max(answer.response.retry_after.unwrap_or_else(|| policy.backoff(round - 1)));
                            again.push(item.clone());
                        }
                        status => {
                            let error = answer.response.error;
                            let path = format!("{what} (in $batch)");
                            return Err(GraphError::Service(Box::new(batch_read_error(path, status, error))));
                        }
                    }
                }
                if again.is_empty() {
                    break;
                }
                if round >= policy.max_attempts.max(1) || started.elapsed() + wait > policy.max_total {
                    return Err(GraphError::Protocol {
                        what: format!("POST /$batch ({what})"),
                        reason: format!("{} reads were still throttled or failing after {round} attempts", again.len()),
                    });
                }
                tokio::time::sleep(wait).await;
                pending = again;
            }
        }
        Ok(out)
    }
}
