//! Offline planning at scale: `cargo bench --bench offline_plan`.
//!
//! For each size N it writes a PoliteMail export of N contacts, an Entra members export of N members and a users
//! export of their union (1.1 N users; 10% of the contacts are not members, so they are adds, and 10% of the
//! members are not on the list, so they are removes), times the CSV readers in this process, then runs the real
//! `writeback plan` on the files and reports its wall time and peak memory against the targets:
//! 100k rows ≤ 0.5 s, 1M rows ≤ 5 s, and ≤ 1 GB at any size.
//!
//! Environment:
//! - `WRITEBACK_BENCH_SIZES`: comma-separated sizes (default `100000,1000000`); `k`/`m` suffixes work (`100k`).
//! - `WRITEBACK_BENCH_DIR`: write the inputs there and keep them (default: a temporary folder, deleted after).
//!
//! Exits 1 when a run fails or misses a target.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GROUP_ID: &str = "00000000-0000-4000-8000-00000000beef";
const MEMORY_LIMIT_BYTES: u64 = 1 << 30;
/// Set (to a size folder) in the child that times the readers alone.
const READERS_ONLY: &str = "WRITEBACK_BENCH_READERS_ONLY";

fn main() {
    // The readers are timed in a child process (this same program, with this variable set): a child's peak RSS
    // counts its parent's peak at the time it was started, so this process must stay small.
    if let Some(dir) = std::env::var_os(READERS_ONLY) {
        time_readers(&Files::in_dir(Path::new(&dir)));
        return;
    }
    // `cargo bench` passes `--bench`; libtest-style filters are ignored here.
    let sizes = sizes();
    let kept_dir = std::env::var_os("WRITEBACK_BENCH_DIR").map(PathBuf::from);
    let temp = tempfile::tempdir().expect("cannot make a temporary folder");
    let root = kept_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root).expect("cannot create the bench folder");
    let key = make_key(&root);

    println!("writeback offline plan benchmark ({})", env!("CARGO_BIN_EXE_writeback"));
    let mut ok = true;
    for n in sizes {
        let dir = root.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).expect("cannot create the size folder");
        let started = Instant::now();
        let files = generate(&dir, n).expect("cannot write the inputs");
        // Flush the freshly written inputs to disk now, so that the plan's own fsync does not wait for them and
        // the timing measures writeback, not the page cache of the generator.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        println!(
            "\n== {n} contacts x {n} members ({} users); inputs written in {:.2} s: contacts {} MB, members {} MB, \
             users {} MB",
            n + n / 10,
            started.elapsed().as_secs_f64(),
            mb(&files.contacts),
            mb(&files.members),
            mb(&files.users)
        );
        let status = Command::new(std::env::current_exe().expect("own path"))
            .env(READERS_ONLY, &dir)
            .status()
            .expect("cannot time the readers");
        ok &= status.success();
        ok &= run_plan(&files, &key, &dir, n);
    }
    if kept_dir.is_some() {
        println!("\ninputs kept in {}", root.display());
    }
    if !ok {
        std::process::exit(1);
    }
}

fn sizes() -> Vec<u64> {
    let raw = std::env::var("WRITEBACK_BENCH_SIZES").unwrap_or_else(|_| "100000,1000000".to_string());
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let lower = s.to_ascii_lowercase();
            let (digits, factor) = match lower.strip_suffix('k') {
                Some(d) => (d.to_string(), 1_000),
                None => match lower.strip_suffix('m') {
                    Some(d) => (d.to_string(), 1_000_000),
                    None => (lower.clone(), 1),
                },
            };
            digits
                .parse::<u64>()
                .map(|d| d * factor)
                .unwrap_or_else(|_| panic!("WRITEBACK_BENCH_SIZES: bad size {s:?}"))
        })
        .collect()
}

struct Files {
    contacts: PathBuf,
    members: PathBuf,
    users: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Files {
        Files { contacts: dir.join("politemail.csv"), members: dir.join("members.csv"), users: dir.join("users.csv") }
    }
}

fn id(i: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i.wrapping_mul(2654435761) & 0xffff_ffff,
        i & 0xffff,
        i % 4096,
        (i >> 12) % 4096,
        i
    )
}

/// Users 0..1.1N. Contacts are users 0..N (written with their `mail`, in mixed case); members are users
/// N/10..1.1N (by object id and UPN).
fn generate(dir: &Path, n: u64) -> std::io::Result<Files> {
    let churn = n / 10;
    let files =
        Files { contacts: dir.join("politemail.csv"), members: dir.join("members.csv"), users: dir.join("users.csv") };

    let mut w = BufWriter::with_capacity(1 << 20, File::create(&files.contacts)?);
    w.write_all(b"\xef\xbb\xbfEmail,First Name,Last Name,Display Name,Company,Title,Status\r\n")?;
    for i in 0..n {
        writeln!(w, "User{i}.Person@bench.example,User{i},Person,\"Person, User{i}\",Contoso,Analyst,Active\r")?;
    }
    w.flush()?;

    let mut w = BufWriter::with_capacity(1 << 20, File::create(&files.members)?);
    w.write_all(b"Object ID,User principal name,Display name,Member type\r\n")?;
    for i in churn..n + churn {
        writeln!(w, "{},user{i}.person@bench.example,User{i} Person,User\r", id(i))?;
    }
    w.flush()?;

    let mut w = BufWriter::with_capacity(1 << 20, File::create(&files.users)?);
    w.write_all(b"id,userPrincipalName,displayName,surname,mail,givenName,userType,accountEnabled,proxyAddresses\r\n")?;
    for i in 0..n + churn {
        writeln!(
            w,
            "{},user{i}.person@bench.example,User{i} Person,Person,User{i}.Person@bench.example,User{i},Member,true,\
             SMTP:User{i}.Person@bench.example;smtp:u{i}@bench.onmicrosoft.example\r",
            id(i)
        )?;
    }
    w.flush()?;
    Ok(files)
}

fn mb(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0)
}

/// Times each reader alone, in this process (the CSV layer's share of the plan's time).
fn time_readers(files: &Files) {
    let t = Instant::now();
    let contacts = writeback::source::politemail_csv::read(&files.contacts, None).expect("contacts");
    let t_contacts = t.elapsed();
    let t = Instant::now();
    let (members, _) = writeback::directory::entra_csv::read_members(&files.members).expect("members");
    let t_members = t.elapsed();
    let t = Instant::now();
    let (users, _) = writeback::directory::entra_csv::read_users(&files.users).expect("users");
    let t_users = t.elapsed();
    println!(
        "readers alone: contacts {:.3} s ({} rows), members {:.3} s ({} rows), users {:.3} s ({} rows)",
        t_contacts.as_secs_f64(),
        contacts.contacts.len(),
        t_members.as_secs_f64(),
        members.len(),
        t_users.as_secs_f64(),
        users.len()
    );
    // SAFETY: rusage is plain data that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        println!("readers peak RSS (all three results held at once): {} MB", rss_bytes(usage.ru_maxrss) >> 20);
    }
}

/// ru_maxrss is in kilobytes on Linux (bytes on macOS).
fn rss_bytes(ru_maxrss: libc::c_long) -> u64 {
    let raw = u64::try_from(ru_maxrss).unwrap_or(0);
    if cfg!(target_os = "macos") {
        raw
    } else {
        raw * 1024
    }
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

// The child is reaped by `wait4` (to read its own rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_plan(files: &Files, key: &Path, dir: &Path, n: u64) -> bool {
    let out = dir.join("plan.json");
    let _ = std::fs::remove_file(&out);
    let stdout = File::create(dir.join("plan.stdout")).expect("stdout file");
    let stderr_path = dir.join("plan.stderr");
    let stderr = File::create(&stderr_path).expect("stderr file");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_writeback"))
        .arg("plan")
        .arg("--contacts")
        .arg(&files.contacts)
        .arg("--members")
        .arg(&files.members)
        .arg("--users")
        .arg(&files.users)
        .args(["--group", GROUP_ID])
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("cannot start writeback");
    let (code, max_rss) = wait_with_rusage(child.id());
    let wall = started.elapsed();

    let target = if n <= 100_000 { Duration::from_millis(500) } else { Duration::from_secs(5 * n / 1_000_000) };
    let time_ok = wall <= target;
    let memory_ok = max_rss <= MEMORY_LIMIT_BYTES;
    println!(
        "writeback plan: exit {code}, wall {:.3} s (target {:.1} s: {}), peak RSS {} MB (target 1024 MB: {}), plan {} MB",
        wall.as_secs_f64(),
        target.as_secs_f64(),
        if time_ok { "ok" } else { "MISSED" },
        max_rss >> 20,
        if memory_ok { "ok" } else { "MISSED" },
        mb(&out)
    );
    if code != 0 {
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        for line in tail.into_iter().rev() {
            println!("  stderr: {line}");
        }
    }
    code == 0 && time_ok && memory_ok
}

/// Waits for `pid` and returns its exit code and its own peak resident set size in bytes.
fn wait_with_rusage(pid: u32) -> (i32, u64) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, and wait4 writes into both pointers, which live for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, rss_bytes(usage.ru_maxrss))
}
