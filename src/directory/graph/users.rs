//! Resolving e-mail addresses to users: batched lookups, or one read of all users when that is cheaper.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::batch::{batch_read_error, BatchItem, MAX_BATCH_ITEMS};
use super::{str_field, GraphClient, GraphError, Kind};
use crate::directory::{DirectoryUser, UserType};
use crate::http::{encode_query_value, odata_string};
use crate::identity::{address_key, smtp_proxy_address, Email, ObjectId};
use crate::signin::Need;

/// The user properties writeback reads.
pub const USER_SELECT: &str = "id,userPrincipalName,displayName,mail,userType,accountEnabled,proxyAddresses";

const USER_READ_HINT: Need = Need::ReadUsers;

/// Users per page when reading all users.
const USER_PAGE: u64 = 999;

/// The rule for reading all users instead of looking addresses up: true when `ceil(users / 999)` pages cost
/// fewer requests than `ceil(addresses / 20)` lookup batches.
pub fn scan_is_cheaper(addresses: usize, users: u64) -> bool {
    let lookups = (addresses as u64).div_ceil(MAX_BATCH_ITEMS as u64);
    let pages = users.div_ceil(USER_PAGE).max(1);
    pages < lookups
}

impl GraphClient {
    /// Every user whose userPrincipalName, mail or an `smtp:` proxy address equals one of `emails`, each once,
    /// sorted by object id.
    ///
    /// Up to 40 addresses are looked up (20 per `$batch`, one sub-request per address combining the three
    /// conditions with `or`). For more, writeback asks for the user count (`GET /users/$count`) and reads all
    /// users instead when [`scan_is_cheaper`]; both ways give the same result.
    pub async fn resolve_users(&self, emails: &[Email]) -> Result<Vec<DirectoryUser>, GraphError> {
        let mut found = BTreeMap::new();
        self.each_resolved_user(emails.iter().map(Email::as_str).collect(), |user| {
            found.insert(user.id.clone(), user);
        })
        .await?;
        Ok(found.into_values().collect())
    }

    /// The users [`GraphClient::resolve_users`] finds (same requests), handed to `each` as they are read instead of
    /// collected: when all users are read, each matching user of a page as the page comes in (a page is the most
    /// that is held); when addresses are looked up, every user found, once each, in object id order. Nothing else
    /// is held but the addresses, borrowed.
    ///
    /// `keys` are the addresses as [`Email`] normalizes them (in any order, repeats allowed).
    pub async fn each_resolved_user(
        &self,
        mut keys: Vec<&str>,
        mut each: impl FnMut(DirectoryUser),
    ) -> Result<(), GraphError> {
        keys.sort_unstable();
        keys.dedup();
        let wanted = SortedKeys(keys);
        if wanted.0.is_empty() {
            return Ok(());
        }
        if wanted.0.len() > 2 * MAX_BATCH_ITEMS {
            match self.user_count().await {
                Ok(count) if scan_is_cheaper(wanted.0.len(), count) => {
                    tracing::info!(
                        "Microsoft Graph: reading all {count} users (fewer requests than {} lookups)",
                        wanted.0.len()
                    );
                    return self.scan(&wanted, &mut each).await;
                }
                Ok(_) => {}
                Err(e) => tracing::info!("Microsoft Graph: cannot count users ({e}); looking addresses up instead"),
            }
        }
        self.resolve_by_lookup(&wanted).await?.into_iter().for_each(each);
        Ok(())
    }

    /// Reads all users and keeps those matching `wanted`.
    #[cfg(test)]
    pub(super) async fn resolve_by_scan(&self, wanted: &impl Wanted) -> Result<Vec<DirectoryUser>, GraphError> {
        let mut found = BTreeMap::new();
        self.scan(wanted, &mut |user: DirectoryUser| {
            found.insert(user.id.clone(), user);
        })
        .await?;
        Ok(found.into_values().collect())
    }

    /// Reads all users, a page at a time, and hands those matching `wanted` to `each`.
    async fn scan(&self, wanted: &impl Wanted, each: &mut impl FnMut(DirectoryUser)) -> Result<(), GraphError> {
        let mut next = Some(self.url(&format!("/users?$select={USER_SELECT}&$top={USER_PAGE}"))?);
        while let Some(url) = next {
            let page = self.get_json(url, Kind::Lookup, &[], USER_READ_HINT).await?;
            crate::progress::page("Microsoft Graph", page_len(&page));
            each_match(&page, wanted, "GET /users", &mut *each)?;
            next = self.next_link(&page, "GET /users")?;
        }
        Ok(())
    }

    /// Looks each address up, 20 to a `$batch`, retrying throttled items after the longest `Retry-After`.
    pub(super) async fn resolve_by_lookup(&self, wanted: &impl Wanted) -> Result<Vec<DirectoryUser>, GraphError> {
        let addresses = wanted.keys();
        let mut found = BTreeMap::new();
        for chunk in addresses.chunks(MAX_BATCH_ITEMS) {
            let mut pending: Vec<BatchItem> =
                chunk.iter().enumerate().map(|(i, address)| lookup_item(&i.to_string(), address)).collect();
            let started = Instant::now();
            let policy = self.retry_policy().clone();
            let mut round = 0u32;
            while !pending.is_empty() {
                round += 1;
                let answers = self.batch_raw(&pending, Kind::LookupBatch).await?.items;
                crate::progress::page("Microsoft Graph", answers.len());
                let mut again = Vec::new();
                let mut wait = Duration::ZERO;
                self.observe_lookups(&answers);
                for (item, answer) in pending.iter().zip(answers) {
                    let r = &answer.response;
                    let retry = crate::retry::classify(r.status) != crate::retry::Verdict::Final;
                    match r.status {
                        200..=299 => {
                            collect_matches(&answer.body, wanted, &mut found, "GET /users (in $batch)")?;
                            let mut next = self.next_link(&answer.body, "GET /users")?;
                            while let Some(url) = next {
                                let page = self.get_json(url, Kind::Lookup, &[], USER_READ_HINT).await?;
                                collect_matches(&page, wanted, &mut found, "GET /users")?;
                                next = self.next_link(&page, "GET /users")?;
                            }
                        }
                        _ if retry => {
                            let w = policy.wait(round - 1, r.retry_after);
                            wait = wait.max(w);
                            again.push(item.clone());
                        }
                        status => {
                            let mut err = batch_read_error("/users (in $batch)".into(), status, r.error.clone());
                            err.hint = (status == 403).then(|| self.explain_forbidden(USER_READ_HINT));
                            return Err(GraphError::Service(Box::new(err)));
                        }
                    }
                }
                if again.is_empty() {
                    break;
                }
                if round >= policy.max_attempts.max(1) || started.elapsed() + wait > policy.max_total {
                    return Err(GraphError::Protocol {
                        what: "POST /$batch (user lookups)".into(),
                        reason: format!(
                            "{} lookups were still throttled or failing after {round} attempts; try again later",
                            again.len()
                        ),
                    });
                }
                tracing::info!(
                    "Microsoft Graph: {} of {} batched lookups throttled or failed; retrying them in {:.3}s",
                    again.len(),
                    pending.len(),
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                pending = again;
            }
        }
        Ok(found.into_values().collect())
    }

    /// Tells the read pacer how the items of a lookup `$batch` fared.
    fn observe_lookups(&self, answers: &[super::batch::RawItemResponse]) {
        let mut seen = crate::pacing::Observation { sent: answers.len() as u32, ..Default::default() };
        for a in answers.iter().map(|a| &a.response).filter(|r| r.status == 429) {
            if a.throttle_information.is_some() {
                seen.throttled_quota += 1;
            } else {
                seen.throttled_other += 1;
            }
            seen.retry_after = seen.retry_after.max(a.retry_after);
        }
        if let Some(change) = self.read_pacer().observe(seen) {
            tracing::info!("pacing reads: {change:?}");
        }
    }

    /// The number of users in the tenant (`GET /users/$count` with `ConsistencyLevel: eventual`).
    pub async fn user_count(&self) -> Result<u64, GraphError> {
        let url = self.url("/users/$count")?;
        let sent = self.execute(Method::GET, &url, Kind::Lookup, &[("ConsistencyLevel", "eventual")], None).await?;
        if !sent.response.status().is_success() {
            return Err(self.fail(&Method::GET, sent, USER_READ_HINT).await);
        }
        let text = sent.response.text().await.unwrap_or_default();
        text.trim().trim_start_matches('\u{feff}').parse().map_err(|_| GraphError::Protocol {
            what: "GET /users/$count".into(),
            reason: "the answer is not a number".into(),
        })
    }

    /// One user by object id; `None` when Graph answers 404.
    pub async fn get_user(&self, id: &ObjectId) -> Result<Option<DirectoryUser>, GraphError> {
        let url = self.url(&format!("/users/{id}?$select={USER_SELECT}"))?;
        let sent = self.execute(Method::GET, &url, Kind::Other, &[], None).await?;
        if sent.response.status() == 404 {
            return Ok(None);
        }
        if !sent.response.status().is_success() {
            return Err(self.fail(&Method::GET, sent, USER_READ_HINT).await);
        }
        let body = super::read_json(sent, &url).await?;
        user_from_json(&body)
            .map(Some)
            .map_err(|reason| GraphError::Protocol { what: format!("GET /users/{id}"), reason })
    }
}

/// The `$batch` item that finds the users an address belongs to.
fn lookup_item(id: &str, address: &str) -> BatchItem {
    let filter = format!(
        "userPrincipalName eq {a} or mail eq {a} or proxyAddresses/any(x:x eq {p})",
        a = odata_string(address),
        p = odata_string(&format!("smtp:{address}"))
    );
    BatchItem {
        id: id.to_string(),
        method: Method::GET,
        url: format!("/users?$filter={}&$select={USER_SELECT}", encode_query_value(&filter)),
        body: None,
    }
}

/// The addresses being resolved (normalized keys), as a set.
pub(super) trait Wanted {
    /// True when `key` is one of them.
    fn contains(&self, key: &str) -> bool;
    /// All of them, in order.
    fn keys(&self) -> Vec<&str>;
}

impl Wanted for BTreeSet<String> {
    fn contains(&self, key: &str) -> bool {
        BTreeSet::contains(self, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

/// Addresses borrowed from the list, sorted and without repeats: a million of them take 16 MB here, several times
/// less than as a set of owned strings.
pub(super) struct SortedKeys<'a>(Vec<&'a str>);

impl Wanted for SortedKeys<'_> {
    fn contains(&self, key: &str) -> bool {
        self.0.binary_search(&key).is_ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.clone()
    }
}

/// True when the user's UPN, mail or an `smtp:` proxy address is in `wanted` (normalized keys).
pub(super) fn user_matches(user: &DirectoryUser, wanted: &impl Wanted) -> bool {
    wanted.contains(&address_key(&user.upn))
        || user.mail.as_deref().is_some_and(|m| wanted.contains(&address_key(m)))
        || user.proxy_addresses.iter().filter_map(|p| smtp_proxy_address(p)).any(|a| wanted.contains(&address_key(a)))
}

fn collect_matches(
    page: &Value,
    wanted: &impl Wanted,
    found: &mut BTreeMap<ObjectId, DirectoryUser>,
    what: &str,
) -> Result<(), GraphError> {
    each_match(page, wanted, what, |user| {
        found.insert(user.id.clone(), user);
    })
}

/// Hands each user of `page` that matches `wanted` to `each`.
fn each_match(
    page: &Value,
    wanted: &impl Wanted,
    what: &str,
    mut each: impl FnMut(DirectoryUser),
) -> Result<(), GraphError> {
    for item in page.get("value").and_then(Value::as_array).into_iter().flatten() {
        let user = user_from_json(item).map_err(|reason| GraphError::Protocol { what: what.to_string(), reason })?;
        if user_matches(&user, wanted) {
            each(user);
        }
    }
    Ok(())
}

pub(super) fn user_from_json(value: &Value) -> Result<DirectoryUser, String> {
    let raw_id = str_field(value, "id").ok_or("a user without an id")?;
    let id = ObjectId::parse(&raw_id).map_err(|e| e.to_string())?;
    let upn = str_field(value, "userPrincipalName").ok_or_else(|| {
        format!(
            "user {id} came back without a userPrincipalName; the app needs User.Read.All (see docs/permissions.md)"
        )
    })?;
    let user_type = match str_field(value, "userType").as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("member") => UserType::Member,
        Some("guest") => UserType::Guest,
        _ => UserType::Unknown,
    };
    Ok(DirectoryUser {
        id,
        upn,
        display_name: str_field(value, "displayName"),
        mail: str_field(value, "mail"),
        user_type,
        account_enabled: value.get("accountEnabled").and_then(Value::as_bool),
        proxy_addresses: value
            .get("proxyAddresses")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// How many objects a page of a Graph collection holds.
pub(super) fn page_len(page: &Value) -> usize {
    page.get("value").and_then(Value::as_array).map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::client;
    use super::*;
    use axum::extract::{Path, Query};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Json;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn uid(n: usize) -> String {
        crate::fixtures::uid(n as u32)
    }

    /// 3000 users: u{i}@contoso.com as UPN; every third has mail m{i}@contoso.com; every fifth an smtp alias
    /// a{i}@fabrikam.com (and an x500 address that must never match).
    fn directory() -> Vec<Value> {
        (0..3000)
            .map(|i| {
                let mut proxies = vec![Value::String(format!("SMTP:u{i}@contoso.com"))];
                if i % 5 == 0 {
                    proxies.push(Value::String(format!("smtp:A{i}@Fabrikam.com")));
                    proxies.push(Value::String(format!("x500:/o=x/cn=x{i}@contoso.com")));
                }
                serde_json::json!({
                    "id": uid(i), "userPrincipalName": format!("U{i}@contoso.com"), "displayName": format!("User {i}"),
                    "mail": if i % 3 == 0 { Value::String(format!("m{i}@contoso.com")) } else { Value::Null },
                    "userType": if i % 7 == 0 { "Guest" } else { "Member" }, "accountEnabled": i % 11 != 0,
                    "proxyAddresses": proxies,
                })
            })
            .collect()
    }

    /// A small evaluator for exactly the filter the client sends.
    fn lookup(users: &[Value], filter: &str) -> Vec<Value> {
        let address = filter
            .strip_prefix("userPrincipalName eq '")
            .and_then(|r| r.split("' or mail eq '").next())
            .unwrap()
            .replace("''", "'")
            .to_lowercase();
        let expected = format!(
            "userPrincipalName eq {a} or mail eq {a} or proxyAddresses/any(x:x eq {p})",
            a = odata_string(&address),
            p = odata_string(&format!("smtp:{address}"))
        );
        assert_eq!(filter, expected);
        users
            .iter()
            .filter(|u| {
                let s = |k: &str| u[k].as_str().map(str::to_lowercase);
                s("userPrincipalName").as_deref() == Some(&address)
                    || s("mail").as_deref() == Some(&address)
                    || u["proxyAddresses"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p.as_str().unwrap().to_lowercase() == format!("smtp:{address}"))
            })
            .cloned()
            .collect()
    }

    fn fake_graph(throttle_every: u32) -> axum::Router {
        let users = Arc::new(directory());
        let hits = Arc::new(AtomicU32::new(0));
        let (u1, u2) = (users.clone(), users.clone());
        axum::Router::new()
            .route(
                "/v1.0/users/$count",
                get(|headers: axum::http::HeaderMap| async move {
                    assert_eq!(headers.get("consistencylevel").unwrap(), "eventual");
                    "3000"
                }),
            )
            .route(
                "/v1.0/users",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let users = u1.clone();
                    async move {
                        assert_eq!(q.get("$select").map(String::as_str), Some(USER_SELECT));
                        let skip: usize = q.get("$skiptoken").map(|s| s.parse().unwrap()).unwrap_or(0);
                        let end = (skip + 999).min(users.len());
                        let mut body = serde_json::json!({"value": users[skip..end]});
                        if end < users.len() {
                            body["@odata.nextLink"] = Value::String(format!("{{ORIGIN}}/v1.0/users?$select={USER_SELECT}&$top=999&$skiptoken={end}"));
                        }
                        Json(body)
                    }
                }),
            )
            .route(
                "/v1.0/$batch",
                post(move |Json(body): Json<Value>| {
                    let users = u2.clone();
                    let hits = hits.clone();
                    async move {
                        let requests = body["requests"].as_array().unwrap().clone();
                        assert!(requests.len() <= 20);
                        let responses: Vec<Value> = requests
                            .iter()
                            .map(|r| {
                                let n = hits.fetch_add(1, Ordering::SeqCst);
                                if throttle_every > 0 && n % throttle_every == 1 {
                                    return serde_json::json!({"id": r["id"], "status": 429,
                                        "headers": {"Retry-After": "0.02"},
                                        "body": {"error": {"code": "TooManyRequests", "message": "Please retry again later."}}});
                                }
                                let url = reqwest::Url::parse(&format!("http://x{}", r["url"].as_str().unwrap())).unwrap();
                                let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
                                serde_json::json!({"id": r["id"], "status": 200, "headers": {},
                                    "body": {"value": lookup(&users, &q["$filter"])}})
                            })
                            .collect();
                        Json(serde_json::json!({ "responses": responses }))
                    }
                }),
            )
            .route(
                "/v1.0/users/{id}",
                get(|Path(id): Path<String>| async move {
                    match directory().into_iter().find(|u| u["id"] == Value::String(id.clone())) {
                        Some(u) => Json(u).into_response(),
                        None => (axum::http::StatusCode::NOT_FOUND, "{}").into_response(),
                    }
                }),
            )
    }

    /// Replaces `{ORIGIN}` in nextLinks: the fake knows its address only after binding.
    async fn serve_fake(throttle_every: u32) -> reqwest::Url {
        let (listener, base) = super::super::test_support::bind().await;
        let origin = base.origin().ascii_serialization();
        let router =
            fake_graph(throttle_every).layer(axum::middleware::map_response(move |resp: axum::response::Response| {
                let origin = origin.clone();
                async move {
                    let (mut parts, body) = resp.into_parts();
                    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    let text = String::from_utf8_lossy(&bytes).replace("{ORIGIN}", &origin);
                    parts.headers.remove("content-length");
                    axum::response::Response::from_parts(parts, axum::body::Body::from(text))
                }
            }));
        super::super::test_support::spawn(listener, router);
        base
    }

    fn emails(n: usize) -> Vec<Email> {
        // A mix: UPNs in other case, mails, aliases, unknown addresses, and one with a quote.
        let mut out: Vec<Email> = (0..n)
            .map(|k| {
                let i = k * 7 % 3000;
                let raw = match k % 4 {
                    0 => format!("U{i}@CONTOSO.com"),
                    1 => format!("m{}@contoso.com", i - i % 3),
                    2 => format!("a{}@fabrikam.com", i - i % 5),
                    _ => format!("nobody{k}@contoso.com"),
                };
                Email::parse(&raw).unwrap()
            })
            .collect();
        out.push(Email::parse("o'brien+x@contoso.com").unwrap());
        out.push(Email::parse("x0@contoso.com").unwrap()); // only in an x500 address: no match
        out
    }

    #[tokio::test]
    async fn lookups_and_scan_give_the_same_users() {
        let base = serve_fake(0).await;
        let list = emails(400);
        let wanted: BTreeSet<String> = list.iter().map(|e| e.as_str().to_string()).collect();

        let by_lookup = client(&base);
        let a = by_lookup.resolve_by_lookup(&wanted).await.unwrap();
        assert_eq!(by_lookup.counts().lookups, wanted.len().div_ceil(20) as u64);

        let by_scan = client(&base);
        let b = by_scan.resolve_by_scan(&wanted).await.unwrap();
        assert_eq!(by_scan.counts().lookups, 4);

        assert_eq!(a, b);
        assert!(a.len() > 200, "{}", a.len());
        assert!(a.iter().all(|u| user_matches(u, &wanted)));

        // The public entry point picks the scan here: ceil(3000/999) = 4 pages < 21 batches.
        let auto = client(&base);
        assert_eq!(auto.resolve_users(&list).await.unwrap(), a);
        assert_eq!(auto.counts().lookups, 1 + 4);
    }

    #[tokio::test]
    async fn throttled_batch_items_are_retried() {
        let base = serve_fake(3).await;
        let list = emails(30);
        let c = client(&base);
        let got = c.resolve_users(&list).await.unwrap();
        let reference = client(&serve_fake(0).await).resolve_users(&list).await.unwrap();
        assert_eq!(got, reference);
        assert!(c.counts().batch > 2, "{:?}", c.counts());
    }

    #[tokio::test]
    async fn get_user_maps_404_to_none() {
        let base = serve_fake(0).await;
        let c = client(&base);
        let u = c.get_user(&ObjectId::parse(&uid(14)).unwrap()).await.unwrap().unwrap();
        assert!(u.is_guest());
        assert_eq!(u.upn, "U14@contoso.com");
        assert!(c.get_user(&ObjectId::parse(&uid(99999)).unwrap()).await.unwrap().is_none());
    }

    #[test]
    fn scan_rule() {
        assert!(!scan_is_cheaper(20, 100));
        assert!(scan_is_cheaper(41, 100));
        assert!(!scan_is_cheaper(10_000, 500_000));
        assert!(scan_is_cheaper(10_000, 100_000));
    }
}
