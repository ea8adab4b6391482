//! `writeback apply` at scale against the fake Graph on loopback: `cargo bench --bench apply`.
//!
//! 1. Floor: 10k adds and 10k removes on a group of 20k members. Reports HTTP requests, Graph writes and wall
//!    time, against the targets requests ≤ ceil(adds/400) + ceil(removes/20) + reads and
//!    writes ≤ ceil(adds/20) + removes, and against a naive client at 2 requests per change (check, then write):
//!    its figures are computed, and its wall time is measured on a sample of changes and scaled up.
//! 2. Quota: the same plan with the fake enforcing a scaled-down write quota (a token bucket). Targets: item
//!    answers of 429 at most 10% of the writes needed, wall time within 1.10× of the quota-bound minimum, zero
//!    failed changes. Prints both figures, the requests, and the wall time.
//!
//! Environment: `WRITEBACK_BENCH_ADDS`, `WRITEBACK_BENCH_REMOVES` (default 10000 each),
//! `WRITEBACK_BENCH_QUOTA` (writes per second, default 1000), `WRITEBACK_BENCH_NAIVE_SAMPLE` (default 400),
//! `WRITEBACK_BENCH_ROUNDS` (quota runs, default 1), and `WRITEBACK_BENCH_BASELINE`: the path of another
//! writeback binary (an older build) to run the quota case with too, alternating with this one, for a before/after
//! comparison in the same run. Exits 1 when a run of this build fails or misses a target.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use support::fake_graph::{Config as FakeConfig, FakeGraph, Faults, Seed, WriteQuota};
use writeback::apply::receipt::Receipt;
use writeback::identity::ObjectId;
use writeback::plan::{Action, Change, Plan, PlanFormat};
use writeback::trust::SigningKey;

const SIGNER: &str = "planner@contoso.example";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

struct World {
    fake: FakeGraph,
    group: String,
    adds: Vec<String>,
    removes: Vec<String>,
    tenant: String,
}

/// `removes + keep` members, of which the first `removes` are to go, and `adds` users to join.
fn world(adds: u64, removes: u64, cfg: FakeConfig) -> World {
    let keep = removes; // the removals are half of the group
    let mut seed = Seed::new();
    let users = seed.add_users(adds + removes + keep);
    let members: Vec<String> = users[..(removes + keep) as usize].to_vec();
    let group = seed.add_group("Big Group", &members);
    let tenant = seed.tenant_id.clone();
    let fake = FakeGraph::start_with(seed, cfg);
    World {
        fake,
        group,
        removes: users[..removes as usize].to_vec(),
        adds: users[(removes + keep) as usize..].to_vec(),
        tenant,
    }
}

fn change(action: Action, id: &str) -> Change {
    Change {
        action,
        user_id: ObjectId::parse(id).expect("a GUID"),
        // The fake's UPN for `guid(1, n)` is `user{n}@contoso.example`, as `plan` would have written it.
        upn: format!("user{}@contoso.example", u64::from_str_radix(&id[24..], 16).expect("a fake user id")),
        mail: None,
        display_name: None,
        source_line: None,
        reason: "bench".into(),
        flags: vec![],
    }
}

fn write_plan(w: &World, dir: &Path, key: &SigningKey) -> PathBuf {
    let members: Vec<ObjectId> = w.fake.members(&w.group).iter().map(|m| ObjectId::parse(m).expect("a GUID")).collect();
    let mut changes: Vec<Change> = w.adds.iter().map(|u| change(Action::Add, u)).collect();
    changes.extend(w.removes.iter().map(|u| change(Action::Remove, u)));
    let now = Utc::now();
    let (created_at, expires_at) = (now - chrono::Duration::minutes(1), now + chrono::Duration::days(1));
    let group = ObjectId::parse(&w.group).expect("a GUID");
    let plan = support::one_group_plan(group, "Big Group", &members, changes, SIGNER, created_at, expires_at);
    let plan = Plan { tenant_id: Some(w.tenant.clone()), ..plan };
    let bytes = writeback::plan::encode(&plan, PlanFormat::Json);
    let path = dir.join("plan.json");
    std::fs::write(&path, &bytes).expect("write the plan");
    std::fs::write(dir.join("plan.json.sig"), key.sign("writeback-plan", &bytes).expect("sign"))
        .expect("write the sig");
    path
}

struct Run {
    ok: bool,
    wall: Duration,
    /// From the start of the run to the first and the last `$batch` the fake received.
    writing: Option<(Duration, Duration)>,
    requests: usize,
    batches: usize,
    writes: usize,
    reads: usize,
    throttled: usize,
    receipt: Option<Receipt>,
}

fn apply(w: &World, dir: &Path, plan: &Path, allowed: &Path) -> Run {
    apply_with(Path::new(env!("CARGO_BIN_EXE_writeback")), w, dir, plan, allowed)
}

fn ledger_args(binary: &Path, dir: &Path) -> Vec<std::ffi::OsString> {
    if binary == Path::new(env!("CARGO_BIN_EXE_writeback")) {
        vec!["--ledger".into(), dir.join("ledger").into_os_string()]
    } else {
        Vec::new()
    }
}

fn apply_with(binary: &Path, w: &World, dir: &Path, plan: &Path, allowed: &Path) -> Run {
    w.fake.clear_requests();
    let started = Instant::now();
    let out = Command::new(binary)
        .arg("apply")
        .arg(plan)
        .arg("--allowed-signers")
        .arg(allowed)
        .args(["--yes", "--max-removals", "1000000", "--max-removal-percent", "100"])
        // The bench's own ledger: never the user's state folder (a baseline from before the ledger has none).
        .args(ledger_args(binary, dir))
        .current_dir(dir)
        .envs(w.fake.env())
        .env_remove("WRITEBACK_CONFIG")
        .env_remove("WRITEBACK_ACCESS_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run writeback");
    let wall = started.elapsed();
    if !out.status.success() {
        eprintln!("apply failed ({:?}):\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    }
    let receipt = std::fs::read(dir.join("plan.json.receipt.json")).ok().and_then(|b| Receipt::decode(&b).ok());
    let batches: Vec<Instant> = w.fake.requests().iter().filter(|r| r.is_batch()).map(|r| r.arrived).collect();
    let writing = batches.iter().min().zip(batches.iter().max()).map(|(a, b)| (*a - started, *b - started));
    Run {
        ok: out.status.success(),
        wall,
        writing,
        requests: w.fake.count(|r| !r.is_token() && r.batch_item.is_none()),
        batches: w.fake.count(|r| r.is_batch()),
        writes: w.fake.count(|r| r.is_write()),
        reads: w.fake.count(|r| !r.is_token() && r.batch_item.is_none() && r.method == "GET"),
        throttled: w.fake.count(|r| r.is_write() && r.status == 429),
        receipt,
    }
}

fn target_reached(w: &World) -> bool {
    let now: std::collections::BTreeSet<String> = w.fake.members(&w.group).into_iter().collect();
    w.adds.iter().all(|a| now.contains(a))
        && w.removes.iter().all(|r| !now.contains(r))
        && now.len() == w.adds.len() + w.removes.len()
}

/// A naive client: for each change, one read to check, then one write (POST $ref or DELETE $ref), one at a time.
/// Returns the time per change.
fn naive_sample(w: &World, n: usize) -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let token = w.fake.issue_token();
    let base = w.fake.env().into_iter().find(|(k, _)| *k == "WRITEBACK_GRAPH_URL").map(|(_, v)| v).unwrap_or_default();
    let client = reqwest::Client::new();
    let half = n / 2;
    let started = Instant::now();
    runtime.block_on(async {
        for (i, user) in w.adds.iter().take(half).chain(w.removes.iter().take(n - half)).enumerate() {
            let check = client.get(format!("{base}/users/{user}?$select=id")).bearer_auth(&token).send().await;
            let _ = check.map(|r| r.status());
            let write = if i < half {
                client
                    .post(format!("{base}/groups/{}/members/$ref", w.group))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "@odata.id": format!("{base}/directoryObjects/{user}") }))
                    .send()
                    .await
            } else {
                client.delete(format!("{base}/groups/{}/members/{user}/$ref", w.group)).bearer_auth(&token).send().await
            };
            let _ = write.map(|r| r.status());
        }
    });
    started.elapsed() / n.max(1) as u32
}

fn main() {
    let adds = env_u64("WRITEBACK_BENCH_ADDS", 10_000);
    let removes = env_u64("WRITEBACK_BENCH_REMOVES", 10_000);
    let quota = env_u64("WRITEBACK_BENCH_QUOTA", 1_000).max(1);
    let sample = env_u64("WRITEBACK_BENCH_NAIVE_SAMPLE", 400) as usize;
    let temp = tempfile::tempdir().expect("a temporary folder");
    let key = SigningKey::generate(SIGNER).expect("a key");
    let allowed = temp.path().join("allowed_signers");
    std::fs::write(&allowed, format!("{SIGNER} namespaces=\"writeback-plan\" {}\n", key.public_key_openssh()))
        .expect("write allowed_signers");
    let mut ok = true;

    println!("writeback apply benchmark ({})", env!("CARGO_BIN_EXE_writeback"));
    println!("\n== floor: {adds} adds + {removes} removes, group of {} members", 2 * removes);
    let w = world(adds, removes, FakeConfig::default());
    let dir = temp.path().join("floor");
    std::fs::create_dir_all(&dir).expect("a folder");
    let plan = write_plan(&w, &dir, &key);
    let run = apply(&w, &dir, &plan, &allowed);
    let request_target = adds.div_ceil(400) + removes.div_ceil(20) + run.reads as u64;
    let write_target = adds.div_ceil(20) + removes;
    let reached = target_reached(&w);
    let failed = run.receipt.as_ref().map_or(u64::MAX, |r| r.counts.failed);
    println!(
        "  wall {:.2} s; HTTP requests {} ({} $batch + {} reads; target ≤ {request_target}); Graph writes {} (target ≤ \
         {write_target}); failed {failed}; membership {}",
        run.wall.as_secs_f64(),
        run.requests,
        run.batches,
        run.reads,
        run.writes,
        if reached { "= target" } else { "≠ target" }
    );
    ok &=
        run.ok && reached && failed == 0 && run.requests as u64 <= request_target && run.writes as u64 <= write_target;

    let naive_changes = adds + removes;
    let per_change = {
        let w2 = world(sample as u64 / 2 + 1, sample as u64 / 2 + 1, FakeConfig::default());
        naive_sample(&w2, sample)
    };
    let naive_wall = per_change.as_secs_f64() * naive_changes as f64;
    println!(
        "  naive (check, then write, per change): HTTP requests {} , Graph writes {naive_changes}, wall ≈ {:.2} s \
         ({:.2} ms per change measured on {sample} changes): {:.0}× the requests, {:.1}× the writes, {:.1}× the time",
        2 * naive_changes,
        naive_wall,
        per_change.as_secs_f64() * 1000.0,
        (2 * naive_changes) as f64 / run.requests.max(1) as f64,
        naive_changes as f64 / run.writes.max(1) as f64,
        naive_wall / run.wall.as_secs_f64().max(1e-9)
    );

    let rounds = env_u64("WRITEBACK_BENCH_ROUNDS", 1).max(1);
    let baseline = std::env::var_os("WRITEBACK_BENCH_BASELINE").map(PathBuf::from);
    println!("\n== quota: the same plan, the fake allowing {quota} writes per second (bucket of {quota})");
    let writes_needed = adds.div_ceil(20) + removes;
    // The bucket starts full: the first `quota` writes are free, the rest come at `quota` per second.
    let minimum = writes_needed.saturating_sub(quota) as f64 / quota as f64;
    println!("  writes needed {writes_needed}; quota-bound minimum {minimum:.2} s");
    let this = PathBuf::from(env!("CARGO_BIN_EXE_writeback"));
    for round in 1..=rounds {
        let mut binaries = vec![("this build", this.clone())];
        if let Some(b) = &baseline {
            binaries.insert(if round % 2 == 1 { 0 } else { 1 }, ("baseline", b.clone()));
        }
        for (name, binary) in binaries {
            let run = quota_run(
                &binary,
                adds,
                removes,
                quota,
                &temp.path().join(format!("quota-{round}-{}", name.len())),
                &key,
                &allowed,
            );
            let share = run.throttled as f64 / writes_needed as f64;
            let ratio = run.wall.as_secs_f64() / minimum.max(1e-9);
            println!(
                "  [{name}, round {round}] wall {:.2} s, ratio {ratio:.3} (target ≤ 1.10); 429 answers {} = {:.1}% of \
                 the writes needed (target ≤ 10%); HTTP requests {} ({} $batch); Graph writes accepted {}; failed \
                 {}; membership {}",
                run.wall.as_secs_f64(),
                run.throttled,
                share * 100.0,
                run.requests,
                run.batches,
                run.writes - run.throttled,
                run.failed,
                if run.reached { "= target" } else { "≠ target" }
            );
            if let Some((first, last)) = run.writing {
                println!(
                    "      before the first write (start, sign-in, gates) {:.2} s; writing {:.2} s = {:.3}× the minimum",
                    first.as_secs_f64(),
                    (last - first).as_secs_f64(),
                    (last - first).as_secs_f64() / minimum.max(1e-9)
                );
            }
            if name == "this build" {
                ok &= run.ok && run.reached && run.failed == 0 && ratio <= 1.10 && share <= 0.10;
            }
        }
    }
    let naive_min = naive_changes.saturating_sub(quota) as f64 / quota as f64;
    println!("  naive under the same quota: at least {naive_min:.2} s ({naive_changes} writes)");

    if !ok {
        println!("\nFAILED: a run failed or missed a target");
        std::process::exit(1);
    }
    println!("\nall targets met");
}

/// One apply of the bench plan by `binary` against a fake enforcing `quota` writes per second.
struct QuotaRun {
    ok: bool,
    reached: bool,
    failed: u64,
    wall: Duration,
    writing: Option<(Duration, Duration)>,
    requests: usize,
    batches: usize,
    writes: usize,
    throttled: usize,
}

fn quota_run(
    binary: &Path,
    adds: u64,
    removes: u64,
    quota: u64,
    dir: &Path,
    key: &SigningKey,
    allowed: &Path,
) -> QuotaRun {
    let window = Duration::from_secs(1);
    let faults = Faults { write_quota: Some(WriteQuota { writes: quota as u32, window }), ..Faults::default() };
    let w = world(adds, removes, FakeConfig { faults, ..FakeConfig::default() });
    std::fs::create_dir_all(dir).expect("a folder");
    let plan = write_plan(&w, dir, key);
    let run = apply_with(binary, &w, dir, &plan, allowed);
    QuotaRun {
        ok: run.ok,
        reached: target_reached(&w),
        failed: run.receipt.as_ref().map_or(u64::MAX, |r| r.counts.failed),
        wall: run.wall,
        writing: run.writing,
        requests: run.requests,
        batches: run.batches,
        writes: run.writes,
        throttled: run.throttled,
    }
}
