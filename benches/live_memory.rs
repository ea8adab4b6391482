//! Peak memory of a live plan against the offline plan of the same data: `cargo bench --bench live_memory`.
//!
//! Reads the floor's generated exports (`contacts.csv`, `members.csv`, `users.csv`, made by `../shared/floor/gen.py`)
//! into the fake Microsoft Graph and the fake PoliteMail (on loopback, in this process), then runs the release
//! binary twice, alternating, each time measuring its own peak resident set (as `/usr/bin/time` reports it): `writeback plan --list … --group …` reading everything live, and `writeback plan --contacts … --members
//! … --users …` reading the same data from the files. Prints the medians, the ratio live/offline, and whether both
//! planned the same adds and removes.
//!
//! Options (environment variables):
//! - `LIVE_MEMORY_DATA`: the folder with the three exports [default: `target/offline-bench/n100k`, which
//!   `cargo bench --bench offline_plan` makes].
//! - `LIVE_MEMORY_RUNS`: measured pairs [default: 3].
//! - After the rounds, one more live run with `-vv` prints where its time and memory go.
//! - `LIVE_MEMORY_BASELINE`: another build of writeback (an older one, say) to run live on the same fakes as well:
//!   its peak memory is printed beside this build's, and its plan must be the same as this build's, byte for
//!   byte, apart from the plan id and times.
//!
//! The fakes hold the whole directory as JSON-ready values in this process (about 1.5 KB a user), so 100k users
//! is a good size for a 2-core machine shared with others; 1M needs a few GB here.

#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use stats::median;
use support::fake_graph::{self as fg, FakeGraph};
use support::fake_politemail::{self as fp, FakePoliteMail};

const LIST_ID: i64 = 12;
const GROUP_ID: &str = "00000000-0000-0000-0000-000000000001";

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let data = env("LIVE_MEMORY_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target").join("offline-bench").join("n100k"));
    let runs: usize = env("LIVE_MEMORY_RUNS").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let baseline = env("LIVE_MEMORY_BASELINE").map(PathBuf::from);
    let writeback = PathBuf::from(env!("CARGO_BIN_EXE_writeback"));
    for file in ["contacts.csv", "members.csv", "users.csv"] {
        if !data.join(file).is_file() {
            eprintln!(
                "live_memory: no {} in {} (make the inputs with the floor's gen.py, or run `cargo bench --bench \
                 offline_plan` once, or set LIVE_MEMORY_DATA)",
                file,
                data.display()
            );
            std::process::exit(2);
        }
    }

    let started = Instant::now();
    let (graph_seed, pm_seed, contacts) = seeds(&data);
    let users = graph_seed.users.len();
    let members = graph_seed.groups.first().map_or(0, |g| g.members.len());
    let graph = FakeGraph::start(graph_seed);
    let pm = FakePoliteMail::start(pm_seed);
    println!(
        "live_memory: {contacts} contacts, {members} members, {users} users from {}; fakes seeded in {:.1} s",
        data.display(),
        started.elapsed().as_secs_f64()
    );

    let work = tempfile::tempdir().expect("a temporary folder");
    let key = work.path().join("demo-planner");
    std::fs::copy(repo.join("samples/keys/demo-planner"), &key).expect("the sample key");
    set_private(&key);

    let peak_file = work.path().join("peak-kib");
    // Each run goes through /usr/bin/time, a small process: a child started straight from this one (which holds
    // the fakes' directory) would be charged this process's resident set as its peak.
    let timed = |bin: &Path| {
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "%M", "-o"]).arg(&peak_file).arg(bin);
        cmd
    };
    let live = |bin: &Path, out: &str| {
        let mut cmd = timed(bin);
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(graph.env()).envs(pm.env());
        cmd.args(["plan", "--list", &LIST_ID.to_string(), "--group", GROUP_ID, "--key"]).arg(&key);
        cmd.arg("--out").arg(work.path().join(out)).current_dir(work.path());
        cmd
    };
    let offline = |out: &str| {
        let mut cmd = timed(&writeback);
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.arg("plan").arg("--contacts").arg(data.join("contacts.csv")).arg("--members");
        cmd.arg(data.join("members.csv")).arg("--users").arg(data.join("users.csv"));
        cmd.args(["--group", GROUP_ID, "--key"]).arg(&key).arg("--out").arg(work.path().join(out));
        cmd.current_dir(work.path());
        cmd
    };

    let (mut live_runs, mut offline_runs, mut baseline_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        for out in ["live.json", "offline.json", "baseline.json"] {
            let _ = std::fs::remove_file(work.path().join(out));
            let _ = std::fs::remove_file(work.path().join(format!("{out}.sig")));
        }
        let live_run = measure(live(&writeback, "live.json"), &peak_file);
        let offline_run = measure(offline("offline.json"), &peak_file);
        let baseline_run = baseline.as_ref().map(|bin| measure(live(bin, "baseline.json"), &peak_file));
        println!(
            "  round {}: live {:.0} MiB {:.2} s, offline {:.0} MiB {:.2} s{}",
            round + 1,
            live_run.peak_mib,
            live_run.wall,
            offline_run.peak_mib,
            offline_run.wall,
            baseline_run
                .as_ref()
                .map_or(String::new(), |b| format!(", baseline live {:.0} MiB {:.2} s", b.peak_mib, b.wall))
        );
        live_runs.push(live_run);
        offline_runs.push(offline_run);
        baseline_runs.extend(baseline_run);
    }

    let median_of = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (live_mib, offline_mib) = (median_of(&live_runs, |r| r.peak_mib), median_of(&offline_runs, |r| r.peak_mib));
    println!();
    println!("| plan of {members} members | peak memory (median of {runs}) | wall (median) |");
    println!("|---|---:|---:|");
    println!("| live (Graph and PoliteMail fakes) | {live_mib:.0} MiB | {:.2} s |", median_of(&live_runs, |r| r.wall));
    println!(
        "| offline (the same data as files) | {offline_mib:.0} MiB | {:.2} s |",
        median_of(&offline_runs, |r| r.wall)
    );
    if !baseline_runs.is_empty() {
        println!(
            "| live, baseline build | {:.0} MiB | {:.2} s |",
            median_of(&baseline_runs, |r| r.peak_mib),
            median_of(&baseline_runs, |r| r.wall)
        );
    }
    println!("live / offline peak memory: {:.2}×", live_mib / offline_mib);

    // Where the live plan's time and memory go: its -vv phase timers, from one more run.
    let mut phases = Command::new(&writeback);
    phases.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("NO_COLOR", "1");
    phases.envs(graph.env()).envs(pm.env()).current_dir(work.path());
    phases.args(["-vv", "plan", "--list", &LIST_ID.to_string(), "--group", GROUP_ID, "--key"]).arg(&key);
    phases.arg("--out").arg(work.path().join("phases.json"));
    if let Ok(output) = phases.stdout(Stdio::null()).output() {
        println!("live plan phases (-vv, one run):");
        for line in String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("phase ")) {
            println!("  {}", line.split("phase ").nth(1).unwrap_or(line));
        }
    }

    let mut ok = true;
    let (live_plan, offline_plan) = (read(&work.path().join("live.json")), read(&work.path().join("offline.json")));
    let counts = |plan: &serde_json::Value| plan["groups"][0]["counts"].clone();
    if counts(&live_plan) == counts(&offline_plan) {
        println!("live and offline plans have the same counts: {}", counts(&live_plan));
    } else {
        println!("DIFFERENT counts: live {} offline {}", counts(&live_plan), counts(&offline_plan));
        ok = false;
    }
    if baseline.is_some() {
        let strip = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines()
                .filter(|l| {
                    !["\"plan_id\"", "\"created_at\"", "\"expires_at\""].iter().any(|k| l.trim_start().starts_with(k))
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (ours, theirs) = (strip(&work.path().join("live.json")), strip(&work.path().join("baseline.json")));
        if ours == theirs {
            println!("this build's live plan is the baseline's, byte for byte, apart from the plan id and times");
        } else {
            println!("DIFFERENT: this build's live plan is not the baseline's; the first differing lines:");
            let differing = ours.lines().zip(theirs.lines()).filter(|(a, b)| a != b).take(5);
            for (a, b) in differing {
                println!("  this build: {a}\n  baseline:   {b}");
            }
            ok = false;
        }
    }
    if !ok {
        std::process::exit(1);
    }
}

fn read(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or_default()
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// The fakes' seeds from the floor's exports: the users and the group's members (users, groups and devices) for
/// Graph, the contacts as a PoliteMail list. Also the number of contacts.
fn seeds(data: &Path) -> (fg::Seed, fp::Seed, usize) {
    let mut seed = fg::Seed::new();
    for row in rows(&data.join("users.csv")) {
        let field = |name: &str| row.get(name).cloned().filter(|v| !v.is_empty());
        let mut user =
            fg::SeedUser::new(&field("id").unwrap_or_default(), &field("userPrincipalName").unwrap_or_default());
        user.display_name = field("displayName");
        user.mail = field("mail");
        user.user_type = field("userType");
        user.account_enabled = field("accountEnabled").is_none_or(|v| v.eq_ignore_ascii_case("true"));
        user.proxy_addresses =
            field("proxyAddresses").map(|p| p.split(';').map(str::to_string).collect()).unwrap_or_default();
        seed.users.push(user);
    }
    let mut members = Vec::new();
    for row in rows(&data.join("members.csv")) {
        let id = row.get("id").cloned().unwrap_or_default();
        let kind = row.get("memberType").cloned().unwrap_or_default();
        if !kind.eq_ignore_ascii_case("user") {
            seed.directory_objects.push(fg::SeedObject {
                id: id.clone(),
                odata_type: format!("#microsoft.graph.{}", kind.to_ascii_lowercase()),
                display_name: row.get("displayName").cloned(),
                extra: Default::default(),
            });
        }
        members.push(id);
    }
    seed.groups.push(fg::SeedGroup::security(GROUP_ID, "Bench", members));
    let contacts: Vec<_> = rows(&data.join("contacts.csv"))
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let field = |name: &str| row.get(name).cloned().unwrap_or_default();
            fp::contact(i as i64 + 1, &field("Email"), &field("FirstName"), &field("LastName"))
        })
        .collect();
    let count = contacts.len();
    let list = fp::SeedList { id: LIST_ID, name: "Bench".into(), contacts, extra: Default::default() };
    (seed, fp::Seed { lists: vec![list] }, count)
}

/// The rows of a CSV file, each as column name → value.
fn rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().cloned().unwrap_or_default();
    reader
        .records()
        .filter_map(Result::ok)
        .map(|record| headers.iter().zip(record.iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect())
        .collect()
}

struct Run {
    wall: f64,
    peak_mib: f64,
}

/// Runs `cmd` (a `/usr/bin/time -f %M -o PEAK …` command) to its end and returns its wall time and the peak
/// resident set `time` wrote; exits when it fails.
fn measure(mut cmd: Command, peak: &Path) -> Run {
    let started = Instant::now();
    let output = cmd.stdin(Stdio::null()).stdout(Stdio::null()).output().expect("/usr/bin/time runs");
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        eprintln!("{:?} failed:\n{}", cmd.get_args().nth(4), String::from_utf8_lossy(&output.stderr));
        std::process::exit(1);
    }
    let kib: f64 = std::fs::read_to_string(peak).unwrap_or_default().trim().parse().unwrap_or(f64::NAN);
    Run { wall, peak_mib: kib / 1024.0 }
}
