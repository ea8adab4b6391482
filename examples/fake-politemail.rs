//! Runs the fake PoliteMail OData API by hand, to try `writeback plan` without a PoliteMail server.
//!
//! ```text
//! cargo run --example fake-politemail -- --seed samples/fake-politemail.json --port 8081
//! ```

#[path = "../tests/support/fake_politemail.rs"]
mod fake_politemail;
#[path = "../tests/support/http_serve.rs"]
mod http_serve;

use std::time::Duration;

use clap::Parser;
use fake_politemail::{Config, FakePoliteMail, Faults, Seed};

/// A stateful local fake of the PoliteMail OData API (`/api/odata`).
#[derive(Parser)]
struct Args {
    /// The lists to start with (JSON: {"lists": [{"ID", "Name", "contacts": [...]}]}).
    #[arg(long, default_value = "samples/fake-politemail.json")]
    seed: String,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Basic auth user.
    #[arg(long, default_value = "writeback")]
    user: String,
    /// Basic auth password.
    #[arg(long, default_value = "fake-politemail-password")]
    password: String,
    /// A personal access token that is also accepted (as user+password, or empty user + password).
    #[arg(long)]
    pat: Option<String>,
    /// Server page size for list contacts (adds odata.nextLink).
    #[arg(long)]
    page_size: Option<usize>,
    /// Answer every Nth request with 429.
    #[arg(long)]
    throttle_every: Option<u64>,
    /// Answer every request after this many milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Do not log requests.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let a = Args::parse();
    let seed = match Seed::from_file(&a.seed) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-politemail: {e}");
            std::process::exit(2);
        }
    };
    let mut cfg =
        Config { port: a.port, user: a.user, password: a.password, page_size: a.page_size, ..Config::default() };
    if a.pat.is_some() {
        cfg.pat = a.pat;
    }
    cfg.faults = Faults {
        throttle_every: a.throttle_every,
        retry_after: Some(1.0),
        delay: a.delay_ms.map(Duration::from_millis),
        ..Faults::default()
    };
    let pm = match FakePoliteMail::try_start(seed, cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fake-politemail: {e}");
            std::process::exit(2);
        }
    };
    println!("fake PoliteMail listening: {}", pm.url);
    println!();
    println!("# export these to point writeback at it:");
    for (k, v) in pm.env() {
        println!("export {k}={v}");
    }
    if let Some(p) = &pm.pat {
        println!("# a personal access token is also accepted: {p}");
    }
    println!();
    eprintln!("(Ctrl-C to stop)");
    let mut shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if a.quiet {
            continue;
        }
        let reqs = pm.requests();
        for r in reqs.iter().skip(shown) {
            eprintln!("{} {} {} (auth: {})", r.status, r.method, r.path, r.auth);
        }
        shown = reqs.len();
    }
}
