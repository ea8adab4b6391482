//! A fake Azure CLI: an `az` script in a folder of its own, to put first on `PATH`.
//!
//! It logs each call's arguments to `calls.log` and prints `token-N.json` for the N-th call (or `token.json` when
//! there is no such file), as `az account get-access-token --output json` prints a token. With `error.txt` present
//! it prints that file to stderr and exits 1, as `az` does when nobody is signed in.
//!
//! The script needs a POSIX shell, so the tests that use it are Unix-only; on Windows `az` is found as `az.cmd`
//! (unit-tested in the library).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A fake `az` in a temporary folder.
pub struct FakeAz {
    dir: tempfile::TempDir,
}

const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls.log"
if [ -f "$dir/error.txt" ]; then
  cat "$dir/error.txt" >&2
  exit 1
fi
n=$(wc -l < "$dir/calls.log" | tr -d ' ')
if [ -f "$dir/token-$n.json" ]; then cat "$dir/token-$n.json"; else cat "$dir/token.json"; fi
"#;

impl FakeAz {
    /// A fake `az` that prints `token` (valid for an hour) on every call.
    pub fn new(token: &str) -> FakeAz {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("az");
        std::fs::write(&path, SCRIPT).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let az = FakeAz { dir };
        az.answer(None, token);
        az
    }

    /// What the `call`-th call prints (`None`: every call without its own file).
    pub fn answer(&self, call: Option<usize>, token: &str) {
        let expires_on = chrono::Utc::now().timestamp() + 3600;
        let expires_local = (chrono::Local::now() + chrono::Duration::hours(1)).format("%Y-%m-%d %H:%M:%S%.6f");
        let json = serde_json::json!({
            "accessToken": token,
            "expiresOn": expires_local.to_string(),
            "expires_on": expires_on,
            "subscription": "00000000-0000-0000-0000-000000000000",
            "tenant": "from-az",
            "tokenType": "Bearer",
        });
        let name = match call {
            Some(n) => format!("token-{n}.json"),
            None => "token.json".into(),
        };
        std::fs::write(self.dir.path().join(name), json.to_string()).unwrap();
    }

    /// Makes every further call fail with `message` on stderr.
    pub fn fail(&self, message: &str) {
        std::fs::write(self.dir.path().join("error.txt"), message).unwrap();
    }

    /// The folder to put first on `PATH`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `PATH` with this folder first, then `rest`.
    pub fn path_with(&self, rest: &std::ffi::OsStr) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = vec![self.dir.path().to_path_buf()];
        dirs.extend(std::env::split_paths(rest));
        std::env::join_paths(dirs).unwrap()
    }

    /// The arguments of each call so far.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
