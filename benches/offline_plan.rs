//! Offline planning against the floor: `cargo bench --bench offline_plan`.
//!
//! The floor (`../shared/floor`, see its README) is a minimal single-threaded program that reads the same three
//! CSV exports, hashes them, resolves the addresses and diffs: what any offline plan must at least do. This bench
//! runs it and `writeback plan` on the same inputs, alternating the two (a warm-up pair, then RUNS pairs), and
//! prints for each size the wall time and peak memory (kernel accounting of each finished child) of both: medians,
//! the spread (min–max), and writeback's ratios to the floor. Targets: wall ≤ 1.5× and peak memory ≤ 1.6× of the
//! floor at 100k and above (smaller sizes are printed, not judged). Then it checks that both programs planned the same thing (adds, removes, input hashes,
//! unresolved addresses), and with `--phases` prints where writeback's time goes (its `-vv` phase timers).
//!
//! Options (after `--`), each also an environment variable:
//! - `--floor PATH` (`WRITEBACK_FLOOR`): the floor's folder or its built binary [default: `../shared/floor`, from
//!   the repository or the folder above it]. A folder is built once with `cargo build --release`, into
//!   `target/floor/` of this repository (the floor's own folder may be read-only).
//! - `--sizes LIST` (`WRITEBACK_BENCH_SIZES`): comma-separated sizes, `k`/`m` suffixes [default: `100k,1m`].
//! - `--runs N` (`WRITEBACK_BENCH_RUNS`): measured pairs per size [default: 5].
//! - `--data DIR` (`WRITEBACK_BENCH_DIR`): where the inputs are (made once with the floor's `gen.py N 0.1`, which
//!   takes about 30 s for 1M, and kept) [default: `target/offline-bench`].
//! - `--phases`: after timing, run writeback once more with `-vv` and print its phase timers.
//! - `--writeback PATH` (`WRITEBACK_BENCH_BIN`): time another build of writeback (an older one, say) instead of
//!   this one.
//!
//! Exits 1 when a run fails, the plans disagree, or a ratio misses its target.
//!
//! The machine's other work shifts both programs' times; the ratios of pairs run back to back are what count.

#[path = "common/stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use stats::median;

const GROUP_ID: &str = "00000000-0000-0000-0000-000000000001";
const WALL_TARGET: f64 = 1.5;
const MEMORY_TARGET: f64 = 1.6;

struct Options {
    writeback: PathBuf,
    floor: PathBuf,
    sizes: Vec<u64>,
    runs: usize,
    data: PathBuf,
    phases: bool,
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("offline_plan: {message}");
            std::process::exit(2);
        }
    };
    let floor = match floor_binary(&options.floor) {
        Ok(floor) => floor,
        Err(message) => {
            eprintln!("offline_plan: {message}");
            std::process::exit(2);
        }
    };
    let writeback = options.writeback.clone();
    println!("writeback offline plan against the floor");
    println!("  writeback: {}", writeback.display());
    println!("  floor:     {}", floor.display());
    std::fs::create_dir_all(&options.data).expect("cannot create the data folder");
    let key = make_key(&options.data);
    let out = tempfile::tempdir().expect("cannot make a temporary folder");

    let mut rows = Vec::new();
    let mut ok = true;
    for &n in &options.sizes {
        let dir = match inputs(&options, n) {
            Ok(dir) => dir,
            Err(message) => {
                eprintln!("offline_plan: {message}");
                std::process::exit(1);
            }
        };
        let files = ["contacts", "members", "users"].map(|f| dir.join(format!("{f}.csv")));
        let floor_out = out.path().join(format!("floor-{n}.json"));
        let plan_out = out.path().join(format!("writeback-{n}.json"));
        let floor_cmd = {
            let mut cmd = Command::new(&floor);
            cmd.args(&files).arg(&floor_out);
            cmd
        };
        let plan_cmd = |out: &Path| {
            let mut cmd = Command::new(&writeback);
            cmd.arg("plan").arg("--contacts").arg(&files[0]).arg("--members").arg(&files[1]);
            cmd.arg("--users").arg(&files[2]).args(["--group", GROUP_ID]).arg("--key").arg(&key).arg("--out").arg(out);
            cmd
        };
        let mut row = Row { n, ..Row::default() };
        for run in 0..=options.runs {
            let floor_run = measure(floor_cmd_clone(&floor_cmd));
            let _ = std::fs::remove_file(&plan_out);
            let _ = std::fs::remove_file(plan_out.with_extension("json.sig"));
            let plan_run = measure(plan_cmd(&plan_out));
            let (Some(f), Some(w)) = (floor_run, plan_run) else {
                ok = false;
                break;
            };
            if run == 0 {
                continue; // warm-up: the page cache and the allocator settle
            }
            row.floor.push(f);
            row.writeback.push(w);
        }
        if row.floor.is_empty() {
            continue;
        }
        print_row_progress(&row);
        rows.push((row, floor_out, plan_out));
    }

    println!();
    println!("| size | floor wall | writeback wall | wall ratio | floor peak | writeback peak | memory ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (row, _, _) in &rows {
        let wall = row.wall_ratios();
        let memory = median(&row.writeback.iter().map(|r| r.peak_mib).collect::<Vec<_>>())
            / median(&row.floor.iter().map(|r| r.peak_mib).collect::<Vec<_>>());
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2}× |",
            size_name(row.n),
            spread(&row.floor.iter().map(|r| r.wall).collect::<Vec<_>>(), "s", 3),
            spread(&row.writeback.iter().map(|r| r.wall).collect::<Vec<_>>(), "s", 3),
            spread(&wall, "×", 2),
            spread(&row.floor.iter().map(|r| r.peak_mib).collect::<Vec<_>>(), "MiB", 0),
            spread(&row.writeback.iter().map(|r| r.peak_mib).collect::<Vec<_>>(), "MiB", 0),
            memory
        );
        let wall = median(&wall);
        let verdict = |ratio: f64, target: f64| if ratio <= target { "ok" } else { "MISSED" };
        println!(
            "  {}: wall {wall:.2}× (target {WALL_TARGET}×: {}), memory {memory:.2}× (target {MEMORY_TARGET}×: {})",
            size_name(row.n),
            verdict(wall, WALL_TARGET),
            verdict(memory, MEMORY_TARGET)
        );
        // The targets are set for real lists (100k and up); below that, fixed costs dominate both programs.
        ok &= row.n < 100_000 || (wall <= WALL_TARGET && memory <= MEMORY_TARGET);
    }
    println!("(medians of {} alternating pairs after a warm-up pair; min–max in brackets)", options.runs);

    for (row, floor_out, plan_out) in &rows {
        match same_content(floor_out, plan_out) {
            Ok(summary) => println!("{}: same plan content as the floor ({summary})", size_name(row.n)),
            Err(message) => {
                println!("{}: DIFFERENT from the floor: {message}", size_name(row.n));
                ok = false;
            }
        }
    }

    if options.phases {
        for (row, _, plan_out) in &rows {
            let _ = std::fs::remove_file(plan_out);
            let _ = std::fs::remove_file(plan_out.with_extension("json.sig"));
            let mut cmd = plan_cmd_phases(&writeback, row.n, &options, &key, plan_out);
            match cmd.output() {
                Ok(output) => {
                    println!("\nwriteback phases at {} (-vv, one run):", size_name(row.n));
                    let text = String::from_utf8_lossy(&output.stderr);
                    for line in text.lines().filter(|l| l.contains("phase ")) {
                        println!("  {}", line.split("phase ").nth(1).unwrap_or(line));
                    }
                }
                Err(e) => println!("cannot run writeback -vv: {e}"),
            }
        }
    }
    if !ok {
        std::process::exit(1);
    }
}

fn plan_cmd_phases(writeback: &Path, n: u64, options: &Options, key: &Path, out: &Path) -> Command {
    let dir = options.data.join(size_name(n));
    let mut cmd = Command::new(writeback);
    cmd.arg("-vv").arg("plan").arg("--contacts").arg(dir.join("contacts.csv"));
    cmd.arg("--members").arg(dir.join("members.csv")).arg("--users").arg(dir.join("users.csv"));
    cmd.args(["--group", GROUP_ID]).arg("--key").arg(key).arg("--out").arg(out);
    cmd.env("NO_COLOR", "1").stdout(Stdio::null());
    cmd
}

fn floor_cmd_clone(cmd: &Command) -> Command {
    let mut copy = Command::new(cmd.get_program());
    copy.args(cmd.get_args());
    copy
}

#[derive(Default)]
struct Row {
    n: u64,
    floor: Vec<Run>,
    writeback: Vec<Run>,
}

impl Row {
    fn wall_ratios(&self) -> Vec<f64> {
        self.writeback.iter().zip(&self.floor).map(|(w, f)| w.wall / f.wall).collect()
    }
}

#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    peak_mib: f64,
}

fn print_row_progress(row: &Row) {
    let walls: Vec<String> =
        row.floor.iter().zip(&row.writeback).map(|(f, w)| format!("{:.2}/{:.2}", f.wall, w.wall)).collect();
    println!("{}: floor/writeback wall per pair (s): {}", size_name(row.n), walls.join(" "));
}

/// `median unit (min–max)`.
fn spread(values: &[f64], unit: &str, decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let unit = if unit == "×" { "×".to_string() } else { format!(" {unit}") };
    format!("{:.decimals$}{unit} ({min:.decimals$}–{max:.decimals$})", median(values))
}

fn size_name(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("n{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("n{}k", n / 1_000),
        n => format!("n{n}"),
    }
}

/// Runs `cmd` to its end (output discarded) and returns its wall time and peak resident set, or `None` (with a
/// message) when it fails.
// The child is reaped by `wait4` (to read its own rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measure(mut cmd: Command) -> Option<Run> {
    let started = Instant::now();
    let child = match cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            return None;
        }
    };
    let pid = child.id();
    let mut stderr = child.stderr;
    // Drain stderr on a thread so a chatty child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(err) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(err, &mut text);
        }
        text
    });
    let (code, peak) = wait_with_rusage(pid);
    let wall = started.elapsed().as_secs_f64();
    let text = reader.join().unwrap_or_default();
    if code != 0 {
        eprintln!("{:?} exited {code}:\n{text}", cmd.get_program());
        return None;
    }
    Some(Run { wall, peak_mib: peak as f64 / (1024.0 * 1024.0) })
}

/// Waits for `pid` and returns its exit code and its own peak resident set size in bytes.
fn wait_with_rusage(pid: u32) -> (i32, u64) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, and wait4 writes into both pointers, which live for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let raw = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    // ru_maxrss is in kilobytes on Linux (bytes on macOS).
    (code, if cfg!(target_os = "macos") { raw } else { raw * 1024 })
}

fn options() -> Result<Options, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut floor = env("WRITEBACK_FLOOR").map(PathBuf::from);
    let mut sizes = env("WRITEBACK_BENCH_SIZES").unwrap_or_else(|| "100k,1m".into());
    let mut runs = env("WRITEBACK_BENCH_RUNS").unwrap_or_else(|| "5".into());
    let mut data = env("WRITEBACK_BENCH_DIR").map(PathBuf::from);
    let mut phases = false;
    let mut writeback = env("WRITEBACK_BENCH_BIN").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--floor" => floor = Some(PathBuf::from(value("--floor")?)),
            "--sizes" => sizes = value("--sizes")?,
            "--runs" => runs = value("--runs")?,
            "--data" => data = Some(PathBuf::from(value("--data")?)),
            "--phases" => phases = true,
            "--writeback" => writeback = Some(PathBuf::from(value("--writeback")?)),
            // cargo bench passes --bench; libtest-style filters mean nothing here.
            _ => {}
        }
    }
    let floor = match floor {
        Some(path) => path,
        None => repo
            .ancestors()
            .skip(1)
            .map(|dir| dir.join("shared").join("floor"))
            .find(|dir| dir.is_dir())
            .ok_or("no ../shared/floor above this repository: pass --floor PATH (or WRITEBACK_FLOOR)")?,
    };
    let runs = runs.parse::<usize>().map_err(|_| format!("--runs: '{runs}' is not a number"))?.max(1);
    let sizes = sizes.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_size).collect::<Result<_, _>>()?;
    let data = data.unwrap_or_else(|| repo.join("target").join("offline-bench"));
    let writeback = writeback.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_writeback")));
    Ok(Options { writeback, floor, sizes, runs, data, phases })
}

fn parse_size(raw: &str) -> Result<u64, String> {
    let lower = raw.to_ascii_lowercase();
    let (digits, factor) = match (lower.strip_suffix('k'), lower.strip_suffix('m')) {
        (Some(d), _) => (d, 1_000),
        (_, Some(d)) => (d, 1_000_000),
        _ => (lower.as_str(), 1),
    };
    digits.parse::<u64>().map(|d| d * factor).map_err(|_| format!("bad size '{raw}'"))
}

/// The floor's folder (with `gen.py`) for a `--floor` path that may be the folder or its binary.
fn floor_folder(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|dir| dir.join("gen.py").is_file()).map(Path::to_path_buf)
}

/// The floor's binary: `path` itself, or the folder's build (made here when missing).
fn floor_binary(path: &Path) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let folder =
        floor_folder(path).ok_or_else(|| format!("{} is not the floor's folder (no gen.py)", path.display()))?;
    let in_place = folder.join("target").join("release").join("floor");
    if in_place.is_file() {
        return Ok(in_place);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("floor");
    let built = target.join("release").join("floor");
    if !built.is_file() {
        println!("building the floor into {} ...", target.display());
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(folder.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .map_err(|e| format!("cannot run cargo to build the floor: {e}"))?;
        if !status.success() || !built.is_file() {
            return Err(format!("building the floor in {} failed", folder.display()));
        }
    }
    Ok(built)
}

/// The folder with size `n`'s inputs, made with the floor's generator when missing.
fn inputs(options: &Options, n: u64) -> Result<PathBuf, String> {
    let dir = options.data.join(size_name(n));
    let names = ["contacts.csv", "members.csv", "users.csv"];
    if names.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let folder = floor_folder(&options.floor).ok_or("the floor's gen.py is needed to make the inputs")?;
    println!("making the {} inputs with {} (1M takes about 30 s) ...", size_name(n), folder.join("gen.py").display());
    let status = Command::new("python3")
        .arg(folder.join("gen.py"))
        .arg(n.to_string())
        .arg("0.1")
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run python3 gen.py: {e}"))?;
    if !status.success() {
        return Err(format!("gen.py {n} failed"));
    }
    // Flush the new files to disk, so that the plans' own fsync does not wait for them.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(dir)
}

fn make_key(dir: &Path) -> PathBuf {
    let key = dir.join("bench-key");
    if !key.exists() {
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench@contoso.example", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen is needed to make the signing key");
        assert!(status.success(), "ssh-keygen failed");
    }
    key
}

/// Checks that writeback's plan says what the floor's does: the same adds and removes (by object id), the same
/// input hashes, as many unresolved addresses and non-user members.
fn same_content(floor: &Path, plan: &Path) -> Result<String, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let floor: serde_json::Value = serde_json::from_slice(&read(floor)?).map_err(|e| format!("floor plan: {e}"))?;
    let plan = writeback::plan::decode(&read(plan)?).map_err(|e| format!("writeback plan: {e}"))?;
    let group = plan.groups.first().ok_or("the plan has no group")?;
    let ids = |key: &str| -> Vec<String> {
        floor[key].as_array().into_iter().flatten().filter_map(|c| c["id"].as_str().map(str::to_string)).collect()
    };
    let changes = |action: writeback::plan::Action| -> Vec<String> {
        let mut ids: Vec<String> = group.changes_of(action).map(|c| c.user_id.to_string()).collect();
        ids.sort();
        ids
    };
    let (adds, removes) = (changes(writeback::plan::Action::Add), changes(writeback::plan::Action::Remove));
    if adds != ids("add") {
        return Err(format!("adds differ ({} here, {} in the floor's plan)", adds.len(), ids("add").len()));
    }
    if removes != ids("remove") {
        return Err(format!("removes differ ({} here, {} in the floor's plan)", removes.len(), ids("remove").len()));
    }
    for (i, role) in ["contacts", "members", "users"].iter().enumerate() {
        let ours = group.inputs.get(i).map(|r| r.sha256.as_str());
        if ours != floor["inputs"][i]["sha256"].as_str() {
            return Err(format!("the {role} input's SHA-256 differs"));
        }
    }
    let count = |kind: writeback::plan::SkipKind| group.counts.not_acted_on.get(&kind).copied().unwrap_or(0);
    let unresolved = count(writeback::plan::SkipKind::Unresolved);
    if Some(unresolved) != floor["counts"]["unresolved"].as_u64() {
        return Err(format!("{unresolved} unresolved here, {} in the floor's plan", floor["counts"]["unresolved"]));
    }
    let non_users = count(writeback::plan::SkipKind::NonUserMember);
    if Some(non_users) != floor["counts"]["current_non_users"].as_u64() {
        return Err(format!(
            "{non_users} non-user members here, {} in the floor's",
            floor["counts"]["current_non_users"]
        ));
    }
    Ok(format!(
        "{} adds, {} removes, {unresolved} unresolved, {non_users} non-user members, input hashes equal",
        adds.len(),
        removes.len()
    ))
}
