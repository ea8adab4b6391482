//! Tests of the fake Graph and PoliteMail servers themselves, with reqwest as a plain HTTP client.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_graph::{self as fg, FakeGraph, RetryAfter, Seed, SeedGroup, SeedUser, WriteQuota, ALREADY_EXISTS};
use support::fake_politemail::{self as fp, FakePoliteMail};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A small tenant: 5 users (one O'Brien with aliases), a security group "Staff" with users 1-3, a dynamic
/// group, a mail-enabled group, and a device in Staff.
fn small_seed() -> (Seed, String) {
    let mut seed = Seed::new();
    let ids = seed.add_users(4);
    let mut ob = SeedUser::new(&fg::guid(1, 99), "Sean.O'Brien@contoso.example");
    ob.mail = Some("sean@contoso.example".into());
    ob.proxy_addresses = vec!["SMTP:sean@contoso.example".into(), "smtp:sob@sales.contoso.example".into()];
    seed.users.push(ob);
    seed.directory_objects.push(fg::SeedObject {
        id: fg::guid(4, 1),
        odata_type: "#microsoft.graph.device".into(),
        display_name: Some("Laptop 1".into()),
        extra: Default::default(),
    });
    let mut members = ids[..3].to_vec();
    members.push(fg::guid(4, 1));
    let staff = seed.add_group("Staff", &members);
    let mut dynamic = SeedGroup::security(&fg::guid(2, 50), "Dynamic", vec![]);
    dynamic.group_types = vec!["DynamicMembership".into()];
    dynamic.membership_rule = Some("user.department -eq \"Sales\"".into());
    seed.groups.push(dynamic);
    let mut dl = SeedGroup::security(&fg::guid(2, 51), "Mail Enabled", vec![]);
    dl.mail_enabled = true;
    seed.groups.push(dl);
    (seed, staff)
}

async fn token(g: &FakeGraph) -> String {
    let r = client()
        .post(g.token_url())
        .form(&[
            ("client_id", g.client_id.as_str()),
            ("client_secret", g.client_secret.as_str()),
            ("scope", fg::GRAPH_SCOPE),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn get(g: &FakeGraph, tok: &str, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", g.base_url) };
    let r = client().get(url).bearer_auth(tok).send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap();
    (status, h, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn send(g: &FakeGraph, tok: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = client().request(m, format!("{}{path}", g.base_url)).bearer_auth(tok);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn bind(id: &str) -> String {
    format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")
}

#[tokio::test]
async fn token_endpoint_and_bearer_checks() {
    let g = FakeGraph::start(small_seed().0);
    let bad = client()
        .post(g.token_url())
        .form(&[
            ("client_id", g.client_id.as_str()),
            ("client_secret", "nope"),
            ("scope", fg::GRAPH_SCOPE),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert!(v["error_description"].as_str().unwrap().starts_with("AADSTS7000215:"));
    assert_eq!(v["error_codes"], json!([7000215]));

    let wrong_tenant = client()
        .post(format!("{}/{}/oauth2/v2.0/token", g.login_url, fg::guid(9, 9)))
        .form(&[
            ("client_id", g.client_id.as_str()),
            ("client_secret", g.client_secret.as_str()),
            ("scope", fg::GRAPH_SCOPE),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_tenant.status(), 400);

    let tok = token(&g).await;
    let payload = tok.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["tid"], g.tenant_id.as_str());

    // No token: 401 with the Graph envelope; request-id always present; client-request-id echoed.
    let r = client()
        .get(format!("{}/organization", g.base_url))
        .header("client-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("request-id"));
    assert_eq!(r.headers()["client-request-id"], "abc-123");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(v["error"]["innerError"]["client-request-id"], "abc-123");
    assert!(v["error"]["innerError"]["date"].is_string() && v["error"]["innerError"]["request-id"].is_string());

    let (s, _, v) = get(&g, &tok, "/organization").await;
    assert_eq!(s, 200);
    assert_eq!(v["value"][0]["id"], g.tenant_id.as_str());
    assert_eq!(g.count(|r| r.is_token()), 3);
    assert!(g
        .requests()
        .iter()
        .filter(|r| r.is_token())
        .all(|r| r.body.as_ref().unwrap()["client_secret"] == "<redacted>"));
}

#[tokio::test]
async fn member_paging_is_exact_and_opaque() {
    let (seed, gid) = Seed::generated(260, 250);
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    let mut url = format!("{}/groups/{gid}/members?$select=id,mail,userPrincipalName&$top=100", g.base_url);
    let mut seen = vec![];
    let mut pages = 0;
    loop {
        let (s, _, v) = get(&g, &tok, &url).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for item in v["value"].as_array().unwrap() {
            assert_eq!(item["@odata.type"], "#microsoft.graph.user");
            assert!(item.get("displayName").is_none(), "only selected properties: {item}");
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match v["@odata.nextLink"].as_str() {
            Some(next) => {
                let tokpart = next.split("$skiptoken=").nth(1).unwrap();
                assert!(tokpart.parse::<u64>().is_err(), "skiptoken must be opaque: {tokpart}");
                assert!(next.contains("$top=100") && next.contains("$select="));
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, g.members(&gid));
    assert_eq!(g.count(|r| r.is_member_page(&gid)), 3);

    // Default page size 100; bad $top values.
    let (_, _, v) = get(&g, &tok, &format!("/groups/{gid}/members")).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 100);
    let (s, _, v) = get(&g, &tok, &format!("/groups/{gid}/members?$top=1000")).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive.");
    let (s, _, v) = get(&g, &tok, &format!("/groups/{gid}/members?$top=999")).await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 250);
    assert!(v.get("@odata.nextLink").is_none());
    let (s, _, v) = get(&g, &tok, &format!("/groups/{gid}/members?$skiptoken=bogus")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("Directory_ExpiredPageToken")));

    // Server-side page cap: shorter pages than asked, still complete.
    g.update_faults(|f| f.max_page_size = Some(7));
    let (_, _, v) = get(&g, &tok, &format!("/groups/{gid}/members?$top=999")).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 7);
    assert!(v["@odata.nextLink"].is_string());
}

#[tokio::test]
async fn lookups_filters_and_counts() {
    let (seed, staff) = small_seed();
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    // Groups by name, OData literal with doubled quotes is parsed.
    let (s, _, v) = get(&g, &tok, "/groups?$filter=displayName%20eq%20'Staff'&$select=id,displayName,groupTypes").await;
    assert_eq!(s, 200);
    assert_eq!(v["value"][0]["id"], staff.as_str());
    let (_, _, v) = get(&g, &tok, "/groups?$filter=displayName eq 'O''Nobody'").await;
    assert_eq!(v["value"], json!([]));
    let (s, _, v) = get(&g, &tok, &format!("/groups/{staff}?$select=id,onPremisesSyncEnabled,mailEnabled")).await;
    assert_eq!(s, 200);
    assert_eq!(v["mailEnabled"], false);
    assert!(v.get("displayName").is_none());

    // Users: by UPN with a quote, mail, proxy address (case-insensitive), and `or`.
    let q = "/users?$select=id,userPrincipalName,proxyAddresses&$filter=userPrincipalName eq 'sean.o''brien@CONTOSO.example'";
    let (_, _, v) = get(&g, &tok, q).await;
    assert_eq!(v["value"][0]["id"], fg::guid(1, 99).as_str());
    let (_, _, v) = get(&g, &tok, "/users?$filter=proxyAddresses/any(x:x eq 'SMTP:SOB@sales.contoso.example')").await;
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    let (_, _, v) = get(
        &g,
        &tok,
        "/users?$filter=mail eq 'user1@contoso.example' or proxyAddresses/any(p:p eq 'smtp:user2@contoso.example')",
    )
    .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let (s, _, _) = get(&g, &tok, "/users?$filter=city eq 'Oslo'").await;
    assert_eq!(s, 400);
    // Default user properties exclude proxyAddresses/accountEnabled (returned only on $select).
    let (s, _, v) = get(&g, &tok, "/users/Sean.O'Brien@contoso.example").await;
    assert_eq!(s, 200);
    assert!(v.get("proxyAddresses").is_none() && v["mail"] == "sean@contoso.example");
    let (s, _, v) = get(&g, &tok, &format!("/users/{}", fg::guid(1, 12345))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("Request_ResourceNotFound")));

    // $count needs ConsistencyLevel: eventual and answers text/plain.
    let (s, _, v) = get(&g, &tok, "/users/$count").await;
    assert_eq!((s, v["error"]["message"].as_str()), (400, Some("$count is not currently supported.")));
    let r = client()
        .get(format!("{}/users/$count", g.base_url))
        .bearer_auth(&tok)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "5");

    // Mixed members: the device has its own @odata.type.
    let (_, _, v) = get(&g, &tok, &format!("/groups/{staff}/members?$select=id")).await;
    let types: Vec<&str> = v["value"].as_array().unwrap().iter().map(|i| i["@odata.type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "#microsoft.graph.device").count(), 1);
}

#[tokio::test]
async fn membership_writes() {
    let (seed, staff) = small_seed();
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    let u4 = fg::guid(1, 4);
    let u1 = fg::guid(1, 1);
    let ob = fg::guid(1, 99);
    let path = format!("/groups/{staff}/members/$ref");
    assert_eq!(send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&u4)}))).await.0, 204);
    let (s, v) = send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&u4)}))).await;
    assert_eq!((s, v["error"]["message"].as_str()), (400, Some(ALREADY_EXISTS)));
    let (s, _) = send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&fg::guid(1, 777))}))).await;
    assert_eq!(s, 404);

    // PATCH: > 20 refused; one existing member fails the whole request; then a clean add.
    let many: Vec<String> = (0..21).map(|i| bind(&fg::guid(1, 1000 + i))).collect();
    assert_eq!(
        send(&g, &tok, "PATCH", &format!("/groups/{staff}"), Some(json!({"members@odata.bind": many}))).await.0,
        400
    );
    let before = g.members(&staff);
    let (s, v) = send(
        &g,
        &tok,
        "PATCH",
        &format!("/groups/{staff}"),
        Some(json!({"members@odata.bind": [bind(&ob), bind(&u1)]})),
    )
    .await;
    assert_eq!((s, v["error"]["message"].as_str()), (400, Some(ALREADY_EXISTS)));
    assert_eq!(g.members(&staff), before, "all or nothing");
    let (s, _) =
        send(&g, &tok, "PATCH", &format!("/groups/{staff}"), Some(json!({"members@odata.bind": [bind(&ob)]}))).await;
    assert_eq!(s, 204);
    assert!(g.is_member(&staff, &ob));

    // Remove: 204, then 404 Request_ResourceNotFound for a non-member.
    assert_eq!(send(&g, &tok, "DELETE", &format!("/groups/{staff}/members/{ob}/$ref"), None).await.0, 204);
    let (s, v) = send(&g, &tok, "DELETE", &format!("/groups/{staff}/members/{ob}/$ref"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("Request_ResourceNotFound")));

    // Dynamic and mail-enabled groups refuse membership writes.
    for gid in [fg::guid(2, 50), fg::guid(2, 51)] {
        let (s, _) =
            send(&g, &tok, "POST", &format!("/groups/{gid}/members/$ref"), Some(json!({"@odata.id": bind(&u1)}))).await;
        assert_eq!(s, 400);
    }
    g.assert_no_misuse();

    // DELETE without /$ref deletes the user itself and is recorded as misuse.
    assert_eq!(send(&g, &tok, "DELETE", &format!("/groups/{staff}/members/{u1}"), None).await.0, 204);
    assert_eq!(g.misuses().len(), 1);
    assert!(!g.user_exists(&u1));
    assert_eq!(send(&g, &tok, "DELETE", &format!("/users/{u4}"), None).await.0, 204);
    assert!(!g.is_member(&staff, &u4));
    assert_eq!(g.count(|r| r.is_write()), 12);
}

#[tokio::test]
async fn batch_limits_order_and_item_throttling() {
    let (seed, staff) = small_seed();
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    let post = |body: Value| {
        let g = &g;
        let tok = tok.clone();
        async move {
            let r = client().post(format!("{}/$batch", g.base_url)).bearer_auth(tok).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let item = |id: String| json!({"id": id, "method": "GET", "url": "/organization"});
    let (s, _) = post(json!({"requests": (0..21).map(|i| item(i.to_string())).collect::<Vec<_>>()})).await;
    assert_eq!(s, 400);
    let (s, _) = post(json!({"requests": [item("1".into()), item("1".into())]})).await;
    assert_eq!(s, 400);
    let (s, _) = post(json!({"requests": [{"id": "1", "method": "POST", "url": format!("/groups/{staff}/members/$ref"), "body": {}}]})).await;
    assert_eq!(s, 400, "a body needs a Content-Type header");

    let u4 = fg::guid(1, 4);
    let u1 = fg::guid(1, 1);
    let ct = json!({"Content-Type": "application/json"});
    let (s, v) = post(json!({"requests": [
        {"id": "1", "method": "PATCH", "url": format!("/groups/{staff}"), "headers": ct, "body": {"members@odata.bind": [bind(&u4)]}},
        {"id": "2", "method": "DELETE", "url": format!("/groups/{staff}/members/{u1}/$ref")},
        {"id": "3", "method": "GET", "url": format!("groups/{staff}/members?$select=id")},
    ]}))
    .await;
    assert_eq!(s, 200);
    let r = v["responses"].as_array().unwrap();
    let ids: Vec<&str> = r.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["3", "2", "1"], "answers come back out of order");
    assert!(r.iter().all(|i| i["headers"].is_object()));
    assert_eq!(r[2]["status"], 204);
    assert_eq!(r[1]["status"], 204);
    assert_eq!(r[0]["status"], 200);
    assert!(g.is_member(&staff, &u4) && !g.is_member(&staff, &u1));
    assert_eq!(g.count(|r| r.is_batch()), 4);
    assert_eq!(g.count(|r| r.batch_item.is_some() && r.is_write()), 2);

    // Per-item throttling: every 2nd operation gets 429 with Retry-After in the item headers.
    g.set_faults(fg::Faults { throttle_every: Some(2), ..Default::default() });
    let (s, v) = post(json!({"requests": (1..=4).map(|i| item(i.to_string())).collect::<Vec<_>>()})).await;
    assert_eq!(s, 200);
    let throttled: Vec<&Value> = v["responses"].as_array().unwrap().iter().filter(|i| i["status"] == 429).collect();
    assert_eq!(throttled.len(), 2);
    assert!(throttled
        .iter()
        .all(|i| i["headers"]["Retry-After"] == "0.05" && i["body"]["error"]["code"] == "TooManyRequests"));
}

#[tokio::test]
async fn throttling_forms_and_write_quota() {
    let (seed, staff) = small_seed();
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    g.set_faults(fg::Faults { throttle_every: Some(2), retry_after: RetryAfter::Seconds(0.05), ..Default::default() });
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);
    let (s, h, v) = get(&g, &tok, "/organization").await;
    assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "0.05"));
    assert_eq!(v["error"]["code"], "TooManyRequests");
    g.set_faults(fg::Faults { throttle_every: Some(1), retry_after: RetryAfter::HttpDate(2), ..Default::default() });
    let (s, h, _) = get(&g, &tok, "/organization").await;
    let date = h["retry-after"].to_str().unwrap().to_string();
    assert_eq!(s, 429);
    assert!(date.ends_with(" GMT") && httpdate::parse_http_date(&date).is_ok(), "{date}");

    // 3 writes per 3000 s: the 4th is refused until a token refills (one each 1000 s, so the real clock never
    // refills one during the test); the test moves the fake's clock on instead of waiting.
    g.set_faults(fg::Faults {
        write_quota: Some(WriteQuota { writes: 3, window: Duration::from_secs(3000) }),
        ..Default::default()
    });
    let path = format!("/groups/{staff}/members/$ref");
    for i in 10..13 {
        let (s, v) = send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&fg::guid(1, i))}))).await;
        assert_eq!(s, 404, "{v}");
    }
    let r = client()
        .post(format!("{}{path}", g.base_url))
        .bearer_auth(&tok)
        .json(&json!({"@odata.id": bind(&fg::guid(1, 4))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ms-throttle-information"], "WriteLimitExceeded");
    let wait: f64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 999.0 && wait <= 1000.01, "{wait}");
    assert_eq!(get(&g, &tok, "/organization").await.0, 200, "reads are not limited by the write quota");
    g.advance_clock(Duration::from_secs_f64(wait / 2.0));
    let early = send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&fg::guid(1, 4))}))).await.0;
    assert_eq!(early, 429, "half the wait refills half a token");
    g.advance_clock(Duration::from_secs_f64(wait));
    assert_eq!(send(&g, &tok, "POST", &path, Some(json!({"@odata.id": bind(&fg::guid(1, 4))}))).await.0, 204);
}

#[tokio::test]
async fn token_expiry() {
    let cfg = fg::Config { token_max_uses: Some(2), ..Default::default() };
    let g = FakeGraph::start_with(small_seed().0, cfg);
    let tok = token(&g).await;
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);
    let (s, h, v) = get(&g, &tok, "/organization").await;
    assert_eq!((s, v["error"]["message"].as_str()), (401, Some("Lifetime validation failed, the token is expired.")));
    assert!(h.contains_key("www-authenticate"));
    let tok2 = token(&g).await;
    assert_eq!(get(&g, &tok2, "/organization").await.0, 200);
    g.expire_tokens();
    assert_eq!(get(&g, &tok2, "/organization").await.0, 401);
    assert_eq!(g.tokens_issued(), 2);
}

#[tokio::test]
async fn dropped_connections_5xx_and_slow_answers() {
    let (seed, staff) = small_seed();
    let g = FakeGraph::start(seed);
    let tok = token(&g).await;
    g.update_faults(|f| f.drop_before = 1);
    let e = client().get(format!("{}/organization", g.base_url)).bearer_auth(&tok).send().await.unwrap_err();
    assert!(!e.is_status(), "{e}");
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);

    // Applied, then dropped: the add happened although the client saw no answer.
    let u4 = fg::guid(1, 4);
    g.update_faults(|f| f.drop_after = 1);
    let r = client()
        .post(format!("{}/groups/{staff}/members/$ref", g.base_url))
        .bearer_auth(&tok)
        .json(&json!({"@odata.id": bind(&u4)}))
        .send()
        .await;
    assert!(r.is_err());
    assert!(g.is_member(&staff, &u4));
    assert_eq!(g.count(|r| r.status == 0), 2);

    g.update_faults(|f| f.server_errors = vec![503, 502]);
    assert_eq!(get(&g, &tok, "/organization").await.0, 503);
    let (s, _, v) = get(&g, &tok, "/organization").await;
    assert_eq!((s, v["error"]["code"].as_str()), (502, Some("BadGateway")));
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);

    // A slow answer: a client that waits 50 ms gives up on an answer held back 2 s; one that waits longer gets it.
    g.update_faults(|f| f.delay = Some(Duration::from_secs(2)));
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    let e = impatient.get(format!("{}/organization", g.base_url)).bearer_auth(&tok).send().await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    g.update_faults(|f| f.delay = Some(Duration::from_millis(20)));
    assert_eq!(get(&g, &tok, "/organization").await.0, 200);
}

#[test]
fn seeds_round_trip_and_a_large_one_builds() {
    let (seed, _) = small_seed();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tenant.json");
    std::fs::write(&p, serde_json::to_string_pretty(&seed).unwrap()).unwrap();
    let back = Seed::from_file(p.to_str().unwrap()).unwrap();
    assert_eq!(back.users.len(), seed.users.len());
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("\"userPrincipalName\"")
            && text.contains("\"directoryObjects\"")
            && text.contains("\"@odata.type\"")
    );

    let mut bad = small_seed().0;
    bad.groups[0].members.push(fg::guid(1, 4242));
    assert!(FakeGraph::try_start(bad, fg::Config::default()).is_err());

    let (seed, gid) = Seed::generated(100_000, 100_000);
    let g = FakeGraph::start(seed);
    assert_eq!(g.members(&gid).len(), 100_000);
}

// ---------------------------------------------------------------------------------------------------------
// PoliteMail.
// ---------------------------------------------------------------------------------------------------------

fn pm_seed() -> fp::Seed {
    let mut s = fp::Seed::default();
    s.add_generated_list(12, "All Staff", 5);
    s.lists.push(fp::SeedList {
        id: 13,
        name: "O'Brien's list".into(),
        contacts: vec![fp::contact(1, "a@x.example", "A", "B")],
        extra: Default::default(),
    });
    s
}

#[tokio::test]
async fn politemail_auth_lists_and_paging() {
    let cfg = fp::Config { page_size: Some(2), ..Default::default() };
    let pm = FakePoliteMail::start_with(pm_seed(), cfg);
    let pat = pm.pat.clone().unwrap();
    let c = client();
    let lists = format!("{}/Lists", pm.url);
    assert_eq!(c.get(&lists).send().await.unwrap().status(), 401);
    assert_eq!(c.get(&lists).basic_auth(&pm.user, Some("wrong")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(&lists).basic_auth(&pm.user, Some(&pm.password)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(&lists).basic_auth(&pat, Some(&pat)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(&lists).basic_auth("", Some(&pat)).send().await.unwrap().status(), 200);
    let auths: Vec<String> = pm.requests().into_iter().map(|r| r.auth).collect();
    assert_eq!(auths, ["none", "bad", "password", "pat-both", "pat-empty-user"]);

    let r = c
        .get(format!("{lists}?$select=ID,Name&$filter=Name eq 'O''Brien''s list'"))
        .basic_auth(&pm.user, Some(&pm.password))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["value"], json!([{"ID": 13, "Name": "O'Brien's list"}]));
    assert!(v["odata.metadata"].is_string());
    let v: Value = c
        .get(format!("{}/Lists(12)", pm.url))
        .basic_auth(&pm.user, Some(&pm.password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["Name"], "All Staff");
    assert_eq!(
        c.get(format!("{}/Lists(99)/Contacts", pm.url))
            .basic_auth(&pm.user, Some(&pm.password))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // 5 contacts, page size 2 → 3 pages via odata.nextLink.
    let mut url = format!("{}/Lists(12)/Contacts", pm.url);
    let mut emails = vec![];
    let mut pages = 0;
    loop {
        let v: Value = c.get(&url).basic_auth(&pm.user, Some(&pm.password)).send().await.unwrap().json().await.unwrap();
        pages += 1;
        for ct in v["value"].as_array().unwrap() {
            emails.push(ct["Email"].as_str().unwrap().to_string());
        }
        match v["odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!((pages, emails.len()), (3, 5));

    // Faults.
    pm.set_faults(fp::Faults { throttle_every: Some(1), retry_after: Some(0.05), ..Default::default() });
    let r = c.get(&lists).basic_auth(&pm.user, Some(&pm.password)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "0.05"));
    pm.set_faults(fp::Faults { server_errors: vec![503], drop_next: 0, ..Default::default() });
    assert_eq!(c.get(&lists).basic_auth(&pm.user, Some(&pm.password)).send().await.unwrap().status(), 503);
    pm.set_faults(fp::Faults { drop_next: 1, ..Default::default() });
    assert!(c.get(&lists).basic_auth(&pm.user, Some(&pm.password)).send().await.is_err());
    assert_eq!(c.get(&lists).basic_auth(&pm.user, Some(&pm.password)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn politemail_pat_placements_are_configurable() {
    let cfg = fp::Config { pat_placements: fp::PatPlacements { both: false, empty_user: true }, ..Default::default() };
    let pm = FakePoliteMail::start_with(pm_seed(), cfg);
    let pat = pm.pat.clone().unwrap();
    let lists = format!("{}/Lists", pm.url);
    assert_eq!(client().get(&lists).basic_auth(&pat, Some(&pat)).send().await.unwrap().status(), 401);
    assert_eq!(client().get(&lists).basic_auth("", Some(&pat)).send().await.unwrap().status(), 200);
}
