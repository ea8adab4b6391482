//! Running the real binary in a workspace of its own (samples, demo keys, isolated user folders), and the signed
//! plans and key sets the tests build on. Re-exported by `support`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use writeback::identity::ObjectId;
use writeback::plan::{self, Action, Change, Counts, GroupPlan, Plan, PlanOptions, Precondition};
use writeback::trust::{SigningKey, PLAN_NAMESPACE};

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// Runs the binary in `dir` with none of writeback's variables set.
pub fn writeback(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("the binary runs")
}

/// Runs the binary in `dir` like [`writeback`], with the variables `env` set (a fake's sign-in, for example).
pub fn writeback_with(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    command(dir).args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().expect("the binary runs")
}

/// Runs the binary in `dir` with none of writeback's variables set, and with the user's folders (home, config,
/// state, cache) in a folder of this test run, so that no test reads or writes the real user's files.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_writeback"));
    cmd.current_dir(dir);
    isolate(&mut cmd);
    for var in SIGN_IN_VARS.iter().chain(
        [
            "WRITEBACK_CONFIG",
            "WRITEBACK_KEY",
            "WRITEBACK_SIGNER",
            "WRITEBACK_ALLOWED_SIGNERS",
            "WRITEBACK_KEY_PASSPHRASE",
        ]
        .iter(),
    ) {
        cmd.env_remove(var);
    }
    cmd
}

/// Points the user's folders of `cmd` into [`test_home`]. A test that needs a user config file sets
/// `XDG_CONFIG_HOME` after this.
pub fn isolate(cmd: &mut Command) -> &mut Command {
    let home = test_home();
    cmd.env("HOME", home)
        .env("PATH", path_without_az())
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
}

/// An empty home folder for this test process, under cargo's temporary folder for tests (never the user's).
pub fn test_home() -> &'static Path {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("homes");
        std::fs::create_dir_all(&base).unwrap();
        tempfile::Builder::new().prefix("home-").tempdir_in(&base).unwrap().keep()
    })
}

/// The variables that choose or feed a sign-in: a test sets the ones it means, never inherits them.
pub const SIGN_IN_VARS: &[&str] = &[
    "WRITEBACK_AUTH",
    "WRITEBACK_ACCESS_TOKEN",
    "WRITEBACK_GRAPH_URL",
    "WRITEBACK_LOGIN_URL",
    "WRITEBACK_IMDS_URL",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
];

/// This process's `PATH` without the folders that hold an Azure CLI, so that `--auth auto` in a test never finds
/// the developer's own `az` (which would sign in to the real Entra ID).
pub fn path_without_az() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !["az", "az.cmd", "az.exe"].iter().any(|name| dir.join(name).exists()))
        .collect();
    std::env::join_paths(kept).unwrap_or_default()
}

/// Output bytes as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit code, or -1 when a signal ended the process.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Asserts that the run exited 0, showing its stdout and stderr when it did not.
#[track_caller]
pub fn ok(out: &Output) {
    assert_eq!(code(out), 0, "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
}

/// An object id from its text.
pub fn oid(s: &str) -> ObjectId {
    ObjectId::parse(s).unwrap()
}

/// A working folder with the samples copied in and the demo keys made private.
pub fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&samples(), dir.path());
    for key in ["demo-planner", "demo-approver", "demo-admin"] {
        set_private(&dir.path().join("keys").join(key));
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Makes the sample plan `plan.json` (signed by the demo planner) in a workspace.
pub fn sample_plan(dir: &Path) {
    let run = writeback(dir, &["plan", "--config", "writeback.toml", "--out", "plan.json"]);
    assert!(run.status.success(), "plan failed: {}", text(&run.stderr));
}

/// All files under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(base, &entry.path(), out);
            } else {
                out.push(entry.path().strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A new ed25519 key made by ssh-keygen (passphrase optional), returned with its loaded form.
pub fn ssh_keygen(dir: &Path, name: &str, comment: &str, passphrase: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen is installed");
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

fn numbered_oid(group: u32, n: u64) -> ObjectId {
    ObjectId::parse(&format!("{group:08x}-0000-4000-8000-{n:012x}")).unwrap()
}

/// A plan of one group, as `writeback plan` makes it: `changes` to the group `group_id` named `group_name`, whose
/// members were `members` when planned, signed as `signer`, made at `created_at`, valid until `expires_at`. The
/// tenant is left unrecorded (set `tenant_id` on the result for a live plan).
pub fn one_group_plan(
    group_id: ObjectId,
    group_name: &str,
    members: &[ObjectId],
    changes: Vec<Change>,
    signer: &str,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Plan {
    Plan {
        format: plan::FORMAT_NAME.into(),
        format_version: plan::FORMAT_VERSION.into(),
        plan_id: uuid::Uuid::new_v4(),
        created_at,
        expires_at,
        signer: signer.into(),
        tool_version: "writeback test".into(),
        tenant_id: None,
        entra_actor: None,
        groups: vec![GroupPlan {
            group_id,
            display_name: Some(group_name.into()),
            options: PlanOptions::default(),
            inputs: vec![],
            precondition: Precondition::from_members(members),
            counts: Counts::tally(&changes, &[]),
            changes,
            not_acted_on: vec![],
        }],
    }
}

/// A plan with one group, `adds` adds and `removes` removes, made at `created_at`, signed as `signer` with the
/// (unencrypted) key at `key`. Writes `name` and `name.sig` in `dir`.
pub fn signed_plan(
    dir: &Path,
    name: &str,
    key: &Path,
    signer: &str,
    adds: u64,
    removes: u64,
    created_at: DateTime<Utc>,
) -> PathBuf {
    let mut changes = Vec::new();
    let members: Vec<ObjectId> = (0..removes).map(|n| numbered_oid(2, n)).collect();
    for n in 0..adds {
        changes.push(Change {
            action: Action::Add,
            user_id: numbered_oid(1, n),
            upn: format!("user{n:06}@contoso.example"),
            mail: None,
            display_name: Some(format!("User {n}")),
            source_line: Some(n + 2),
            reason: "on the list".into(),
            flags: vec![],
        });
    }
    for id in &members {
        changes.push(Change {
            action: Action::Remove,
            user_id: id.clone(),
            upn: format!("gone-{id}@contoso.example"),
            mail: None,
            display_name: None,
            source_line: None,
            reason: "not on the list".into(),
            flags: vec![],
        });
    }
    let group = ObjectId::parse("b53a97e9-e214-49f9-9d7e-4e4a23c5c243").unwrap();
    let expires_at = created_at + Duration::days(7);
    let plan = one_group_plan(group, "Big <group> & \"co\"", &members, changes, signer, created_at, expires_at);
    let bytes = plan::encode(&plan, plan::PlanFormat::Json);
    let key = SigningKey::load(key).unwrap();
    let sig = key.sign(PLAN_NAMESPACE, &bytes).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(dir.join(format!("{name}.sig")), sig).unwrap();
    path
}

/// A folder with a planner key and two approver keys (made by ssh-keygen) and an allowed_signers file for them.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub planner: PathBuf,
    pub approvers: Vec<PathBuf>,
    pub allowed: PathBuf,
}

pub fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (planner, planner_pub) = ssh_keygen(dir.path(), "planner", "planner@contoso.example", "");
    let mut allowed = format!("planner@contoso.example namespaces=\"writeback-plan\" {planner_pub}\n");
    let mut approvers = Vec::new();
    for who in ["alice", "bob"] {
        let (path, public) = ssh_keygen(dir.path(), who, &format!("{who}@contoso.example"), "");
        allowed.push_str(&format!("{who}@contoso.example namespaces=\"writeback-approval\" {public}\n"));
        approvers.push(path);
    }
    let allowed_path = dir.path().join("allowed_signers");
    std::fs::write(&allowed_path, allowed).unwrap();
    Keys { dir, planner, approvers, allowed: allowed_path }
}
