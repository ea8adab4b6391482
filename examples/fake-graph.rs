//! Runs the fake Microsoft Graph (and token endpoint) by hand, to try writeback without a tenant.
//!
//! ```text
//! cargo run --example fake-graph -- --seed samples/fake-tenant.json --port 8080
//! ```
//! It prints the environment variables to export, then logs each request to stderr until Ctrl-C.

#[path = "../tests/support/fake_graph.rs"]
mod fake_graph;
#[path = "../tests/support/http_serve.rs"]
mod http_serve;

use std::time::Duration;

use clap::Parser;
use fake_graph::{BatchOrder, Config, FakeGraph, Faults, RetryAfter, Seed, WriteQuota};

/// A stateful local fake of Microsoft Graph v1.0 and the Entra ID token endpoint.
#[derive(Parser)]
struct Args {
    /// The directory to start with (JSON: tenant_id, users, groups, directoryObjects).
    #[arg(long, default_value = "samples/fake-tenant.json")]
    seed: String,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The client id the token endpoint accepts.
    #[arg(long)]
    client_id: Option<String>,
    /// The client secret the token endpoint accepts.
    #[arg(long)]
    client_secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
    /// Answer every Nth Graph operation with 429.
    #[arg(long)]
    throttle_every: Option<u64>,
    /// Retry-After seconds on throttled answers (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    retry_after: f64,
    /// Send Retry-After as an HTTP-date instead of seconds.
    #[arg(long)]
    retry_after_date: bool,
    /// Allow this many writes per --write-window seconds, then 429 WriteLimitExceeded.
    #[arg(long)]
    write_quota: Option<u32>,
    /// The write quota window in seconds.
    #[arg(long, default_value_t = 150.0)]
    write_window: f64,
    /// Answer every request after this many milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Cap every page at this many items, whatever $top asks.
    #[arg(long)]
    max_page_size: Option<usize>,
    /// The next N Graph requests get 503.
    #[arg(long, default_value_t = 0)]
    fail_next: usize,
    /// The next N Graph requests are dropped without an answer.
    #[arg(long, default_value_t = 0)]
    drop_next: u32,
    /// Do not log requests.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let a = Args::parse();
    let seed = match Seed::from_file(&a.seed) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-graph: {e}");
            std::process::exit(2);
        }
    };
    let mut cfg = Config { port: a.port, token_lifetime: Duration::from_secs(a.token_lifetime), ..Config::default() };
    cfg.batch_order = BatchOrder::Shuffled;
    if let Some(id) = a.client_id {
        cfg.client_id = id;
    }
    if let Some(s) = a.client_secret {
        cfg.client_secret = s;
    }
    let retry_after = if a.retry_after_date {
        RetryAfter::HttpDate(a.retry_after.ceil().max(1.0) as u64)
    } else {
        RetryAfter::Seconds(a.retry_after)
    };
    cfg.faults = Faults {
        throttle_every: a.throttle_every,
        retry_after,
        write_quota: a.write_quota.map(|w| WriteQuota { writes: w, window: Duration::from_secs_f64(a.write_window) }),
        server_errors: vec![503; a.fail_next],
        drop_before: a.drop_next,
        delay: a.delay_ms.map(Duration::from_millis),
        max_page_size: a.max_page_size,
        ..Faults::default()
    };
    let g = match FakeGraph::try_start(seed, cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("fake-graph: {e}");
            std::process::exit(2);
        }
    };
    println!("fake Graph listening: {}", g.base_url);
    println!("token endpoint:       {}", g.token_url());
    println!();
    println!("# export these to point writeback at it:");
    for (k, v) in g.env() {
        println!("export {k}={v}");
    }
    println!();
    eprintln!("(Ctrl-C to stop)");
    let mut shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if a.quiet {
            continue;
        }
        let reqs = g.requests();
        for r in reqs.iter().skip(shown) {
            let via = r.batch_item.as_ref().map(|(_, id)| format!(" (batch item {id})")).unwrap_or_default();
            eprintln!("{} {} {}{via}", r.status, r.method, r.path);
        }
        shown = reqs.len();
        for m in g.misuses() {
            eprintln!("FATAL MISUSE: {m}");
        }
    }
}
