//! `writeback plan`: read the list and the group, resolve, diff, and write a signed plan.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Context;
use crate::config::{self, parse_duration, Scope};
use crate::error::{exit, Error, Result};
use crate::plan::PlanFormat;
use crate::planning::mapping::{self, MappingFlags};
use crate::planning::output::{self, OutputPolicy};
use crate::planning::services::Endpoints;
use crate::planning::{self, PlanRequest, Planned};
use crate::report::plan::{self as report, Files};
use crate::trust::keys::SigningKey;

/// Arguments of `writeback plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The config file [default: ./writeback.toml when it exists, else the user's own,
    /// ~/.config/writeback/writeback.toml].
    #[arg(long, env = "WRITEBACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Plan only these `[[sync]]` mappings of the config, by name (repeatable).
    #[arg(long = "sync", value_name = "NAME")]
    pub syncs: Vec<String>,

    /// The PoliteMail list export (CSV).
    #[arg(long, value_name = "FILE", alias = "politemail-csv", conflicts_with = "list")]
    pub contacts: Option<PathBuf>,

    /// The PoliteMail list to read through its API, by name or id (needs POLITEMAIL_URL).
    #[arg(long, value_name = "NAME|ID")]
    pub list: Option<String>,

    /// The Entra "Download members" export of the group. Without it, members are read from Graph.
    #[arg(long, value_name = "FILE")]
    pub members: Option<PathBuf>,

    /// The Entra "Download users" export, to resolve contacts. Without it, users are looked up in Graph.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,

    /// The group: its object id (offline), or its object id or display name (Graph).
    #[arg(long, value_name = "ID|NAME")]
    pub group: Option<String>,

    /// The group's display name to record in the plan when planning from files.
    #[arg(long, value_name = "NAME")]
    pub group_name: Option<String>,

    /// The contacts file's email column, when it is not Email, E-mail, Email Address or EmailAddress.
    #[arg(long, value_name = "COLUMN")]
    pub email_column: Option<String>,

    /// A file of UPNs or object ids that are never removed (one per line, # comments).
    #[arg(long, value_name = "FILE")]
    pub keep: Option<PathBuf>,

    /// Plan adds only: nobody is removed.
    #[arg(long, conflicts_with = "remove_only")]
    pub add_only: bool,

    /// Plan removes only: nobody is added.
    #[arg(long)]
    pub remove_only: bool,

    /// The plan's format.
    #[arg(long, value_enum)]
    pub format: Option<PlanFormat>,

    /// Where to write the plan; the signature goes to the same path plus `.sig`.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// How long the plan stays valid, e.g. 7d, 36h, 90m [default: 7d].
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,

    /// The planner's private key (OpenSSH ed25519).
    #[arg(long, env = "WRITEBACK_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// The principal to record as signer, as it appears in allowed_signers [default: the key's comment].
    #[arg(long, env = "WRITEBACK_SIGNER", value_name = "PRINCIPAL")]
    pub signer: Option<String>,

    /// Replace an existing file at --out that is not a plan. Never replaced, even so: the plan's inputs, the
    /// config, a key, an allowed_signers file, or a plan with a receipt, journal or approval beside it.
    #[arg(long)]
    pub force: bool,

    /// Plan a list that has no contacts (it removes every member of the group); without it, such a list is
    /// refused.
    #[arg(long)]
    pub allow_empty: bool,

    /// For unattended runs: exit 0 and write no plan when no group has a change, exit 40 when a plan with
    /// changes was written.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Print the plan summary as JSON instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Where Microsoft Graph is.
    #[command(flatten)]
    pub graph: crate::cli::options::GraphOptions,
}

/// Runs `writeback plan`; returns the exit status (with `--detailed-exitcode`, [`exit::CHANGES`] when a plan
/// with changes was written).
pub fn run(args: PlanArgs, ctx: &Context) -> Result<i32> {
    let request = request(&args, ctx)?;
    // Pages read from Graph or PoliteMail are counted on stderr while the plan is made (nothing for files).
    crate::progress::show_reads();
    let planned = planning::plan(request);
    crate::progress::end_reads();
    let planned = planned?;
    let (plan, warnings, files) = match &planned {
        Planned::Written(w) => {
            (&w.plan, &w.warnings, Some(Files { plan: &w.out, signature: &w.signature, sha256: Some(&w.sha256) }))
        }
        Planned::Unchanged { plan, warnings } => (plan, warnings, None),
    };
    for warning in warnings {
        crate::eoutln!("warning: {warning}");
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report::summary_json(plan, files)).unwrap_or_default());
    } else {
        crate::out!("{}", report::summary_text(plan, files, crate::terminal::table_width()));
    }
    let code = if args.detailed_exitcode && files.is_some() { exit::CHANGES } else { exit::OK };
    // The process ends now: handing a plan of a million members back to the allocator, string by string, would
    // only cost time.
    std::mem::forget(planned);
    Ok(code)
}

/// Merges the flags, the environment and the config into a request, checking every argument (and loading the
/// key) before any input is read.
fn request(args: &PlanArgs, ctx: &Context) -> Result<PlanRequest> {
    let config = config::discover(Scope::Planner, args.config.as_deref(), None)?.config;
    let defaults = config.as_ref().map(|c| c.defaults.clone()).unwrap_or_default();
    let mappings = mapping::merge(&mapping_flags(args), config.as_ref())?;
    let sign_in = args.graph.resolve(config.as_ref());
    let expires_raw = args.expires_in.as_deref().or(defaults.expires_in.as_deref()).unwrap_or("7d");
    let expires_in = parse_duration(expires_raw).map_err(|e| Error::Usage(format!("--expires-in: {e}")))?;
    let max_lifetime = config::max_plan_lifetime(config.as_ref())?;
    if expires_in > max_lifetime {
        return Err(Error::Usage(format!(
            "--expires-in {expires_raw} is longer than max_plan_lifetime ({}): verify, approve, export and apply \
             would refuse the plan. Ask for a shorter lifetime, or raise max_plan_lifetime in the config",
            crate::plan::human_duration(max_lifetime)
        )));
    }
    let format = args.format.or(defaults.format).unwrap_or(PlanFormat::Json);
    let key_path = args.key.clone().or(defaults.key.clone()).ok_or_else(|| {
        Error::Usage(
            "no signing key: pass --key FILE (or set key in writeback.toml); `writeback keygen` makes one".into(),
        )
    })?;
    let created_at = chrono::DateTime::from_timestamp(ctx.now.timestamp(), 0).unwrap_or(ctx.now);
    let plan_id = uuid::Uuid::new_v4();
    let out = args.out.clone().or(defaults.out.clone()).unwrap_or_else(|| {
        PathBuf::from(if format == PlanFormat::Csv { "plan-{date}.csv" } else { "plan-{date}.json" })
    });
    let out = output::expand(&out, created_at, plan_id);
    let allowed_signers: Vec<PathBuf> =
        std::env::var_os(crate::trust::ALLOWED_SIGNERS_ENV).map(PathBuf::from).into_iter().collect();
    let output = OutputPolicy::new(args.force, &mappings, config.as_ref(), &key_path, &allowed_signers);
    let key = SigningKey::load(&key_path)?;
    let signer = args.signer.clone().or(defaults.signer.clone()).unwrap_or_else(|| key.comment().to_string());
    if signer.trim().is_empty() {
        return Err(Error::Usage(
            "the key has no comment to use as signer: pass --signer PRINCIPAL (as written in allowed_signers)".into(),
        ));
    }
    Ok(PlanRequest {
        mappings,
        endpoints: Endpoints { sign_in, politemail_url: defaults.politemail_url.clone() },
        format,
        plan_id,
        created_at,
        expires_in,
        signer,
        key,
        key_path,
        out,
        output,
        allow_empty: args.allow_empty,
        max_removal_percent: defaults
            .max_removal_percent
            .unwrap_or(crate::apply::gates::Thresholds::default().max_removal_percent),
        only_with_changes: args.detailed_exitcode,
    })
}

/// The flags that describe mappings.
fn mapping_flags(args: &PlanArgs) -> MappingFlags {
    MappingFlags {
        syncs: args.syncs.clone(),
        contacts: args.contacts.clone(),
        list: args.list.clone(),
        members: args.members.clone(),
        users: args.users.clone(),
        group: args.group.clone(),
        group_name: args.group_name.clone(),
        email_column: args.email_column.clone(),
        keep: args.keep.clone(),
        add_only: args.add_only,
        remove_only: args.remove_only,
    }
}
