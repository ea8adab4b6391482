//! `writeback plan`: read the list and the group, resolve, diff, and write a signed plan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::Context;
use crate::config::{parse_duration, Config, SyncMapping};
use crate::directory::graph::{GraphClient, GraphError};
use crate::directory::{entra_csv, DirectoryUser, GroupMember};
use crate::error::{Error, Result};
use crate::identity::{Email, ObjectId};
use crate::plan::{self, Counts, GroupPlan, InputRecord, InputRole, Plan, PlanFormat, PlanOptions};
use crate::reconcile::{reconcile, KeepList, ReconcileOptions, Reconciler};
use crate::source::politemail_api::{PoliteMailClient, PoliteMailConfig};
use crate::source::{politemail_csv, ContactList};
use crate::trust::keys::SigningKey;

/// Arguments of `writeback plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The config file (default: ./writeback.toml when it exists).
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

    /// Print the plan summary as JSON instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Where Microsoft Graph is.
    #[command(flatten)]
    pub graph: crate::cli::options::GraphOptions,
}

/// Where a mapping's contacts come from.
#[derive(Debug, Clone)]
pub enum ContactsSource {
    /// A PoliteMail CSV export.
    Csv(PathBuf),
    /// The PoliteMail API, by list name or id.
    Api(String),
}

/// Where a mapping's directory data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// An Entra admin center export.
    Csv(PathBuf),
    /// Microsoft Graph.
    Graph,
}

/// One fully specified mapping, after the config and the flags are merged.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// For messages.
    pub name: String,
    /// The group's id or (with Graph) name.
    pub group: String,
    /// The display name to record, when known.
    pub group_name: Option<String>,
    /// The list.
    pub contacts: ContactsSource,
    /// The current members.
    pub members: DirectorySource,
    /// The users to resolve against.
    pub users: DirectorySource,
    /// The email column override.
    pub email_column: Option<String>,
    /// Direction and keep list.
    pub add_only: bool,
    /// Direction.
    pub remove_only: bool,
    /// The keep list file.
    pub keep: Option<PathBuf>,
}

/// Everything read for one mapping, ready for [`reconcile`].
pub struct GroupInputs {
    /// The group's id.
    pub group_id: ObjectId,
    /// Its display name.
    pub display_name: Option<String>,
    /// The contacts.
    pub contacts: ContactList,
    /// The current members.
    pub members: Vec<GroupMember>,
    /// Users the contacts may resolve to.
    pub users: std::sync::Arc<Vec<DirectoryUser>>,
    /// Input records, in role order.
    pub inputs: Vec<InputRecord>,
    /// The tenant, when read from Graph.
    pub tenant_id: Option<String>,
    /// Things the planner should know (e.g. a role-assignable group).
    pub warnings: Vec<String>,
}

/// The live services a plan may read, set up on first use.
struct Services {
    graph_url: Option<String>,
    login_url: Option<String>,
    politemail_url: Option<String>,
    runtime: Option<tokio::runtime::Runtime>,
    graph: Option<GraphClient>,
    politemail: Option<std::sync::Arc<PoliteMailClient>>,
}

impl Services {
    fn block_on<F: std::future::Future>(&mut self, future: F) -> Result<F::Output> {
        if self.runtime.is_none() {
            self.runtime = Some(crate::http::runtime()?);
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(future)),
            None => Err(Error::Internal("no async runtime".into())),
        }
    }

    fn graph(&mut self) -> Result<GraphClient> {
        if let Some(graph) = &self.graph {
            return Ok(graph.clone());
        }
        let graph = GraphClient::from_env(self.graph_url.as_deref(), self.login_url.as_deref())?;
        self.graph = Some(graph.clone());
        Ok(graph)
    }

    fn politemail(&mut self) -> Result<std::sync::Arc<PoliteMailClient>> {
        if let Some(pm) = &self.politemail {
            return Ok(pm.clone());
        }
        let fallback = self.politemail_url.clone();
        let config = PoliteMailConfig::from_lookup(
            |name| std::env::var(name).ok().or_else(|| (name == "POLITEMAIL_URL").then(|| fallback.clone()).flatten()),
            crate::http::HttpConfig::from_env()?,
        )?;
        let pm = std::sync::Arc::new(PoliteMailClient::new(config)?);
        self.politemail = Some(pm.clone());
        Ok(pm)
    }
}

/// Runs `writeback plan`.
pub fn run(args: PlanArgs, ctx: &Context) -> Result<()> {
    let config = Config::discover(args.config.as_deref())?;
    let defaults = config.as_ref().map(|c| c.defaults.clone()).unwrap_or_default();

    // Check every argument before reading any input.
    let mappings = mappings(&args, config.as_ref())?;
    let (graph_url, login_url) = args.graph.resolve(config.as_ref());
    let expires_in = parse_duration(args.expires_in.as_deref().or(defaults.expires_in.as_deref()).unwrap_or("7d"))
        .map_err(|e| Error::Usage(format!("--expires-in: {e}")))?;
    let format = args.format.or(defaults.format).unwrap_or(PlanFormat::Json);
    let key_path = args.key.clone().or(defaults.key.clone()).ok_or_else(|| {
        Error::Usage(
            "no signing key: pass --key FILE (or set key in writeback.toml); `writeback keygen` makes one".into(),
        )
    })?;
    let created_at = chrono::DateTime::from_timestamp(ctx.now.timestamp(), 0).unwrap_or(ctx.now);
    let plan_id = uuid::Uuid::new_v4();
    let out = args.out.clone().or(defaults.out.clone()).unwrap_or_else(|| {
        let ext = if format == PlanFormat::Csv { "csv" } else { "json" };
        PathBuf::from(format!("plan-{}.{ext}", created_at.format("%Y%m%d-%H%M%S")))
    });
    let sig_path = crate::archive::signature_path(&out);
    let key = SigningKey::load(&key_path)?;
    let signer = args.signer.clone().or(defaults.signer.clone()).unwrap_or_else(|| key.comment().to_string());
    if signer.trim().is_empty() {
        return Err(Error::Usage(
            "the key has no comment to use as signer: pass --signer PRINCIPAL (as written in allowed_signers)".into(),
        ));
    }

    let mut user_cache: HashMap<PathBuf, (std::sync::Arc<Vec<DirectoryUser>>, InputRecord)> = HashMap::new();
    let mut services = Services {
        graph_url,
        login_url,
        politemail_url: defaults.politemail_url.clone(),
        runtime: None,
        graph: None,
        politemail: None,
    };
    let mut groups = Vec::new();
    let mut tenant_id = None;
    let mut warnings = Vec::new();
    for mapping in &mappings {
        let planned = match plan_from_files(mapping, &mut user_cache, &mut services)? {
            Some(planned) => planned,
            None => {
                let inputs = gather(mapping, &mut user_cache, &mut services)?;
                let (keep, keep_record) = read_keep_of(mapping)?;
                let options = reconcile_options(mapping, keep);
                let result = reconcile(&inputs.contacts.contacts, &inputs.users, &inputs.members, &options);
                let mut records = inputs.inputs;
                records.extend(keep_record);
                Planned {
                    group_id: inputs.group_id,
                    display_name: inputs.display_name,
                    records,
                    tenant_id: inputs.tenant_id,
                    warnings: inputs.warnings,
                    result,
                }
            }
        };
        let (result, records) = (planned.result, planned.records);
        warnings.extend(planned.warnings.iter().map(|w| format!("{}: {w}", mapping.name)));
        warnings.extend(result.warnings.iter().map(|w| format!("{}: {w}", mapping.name)));
        if let Some(t) = planned.tenant_id {
            tenant_id.get_or_insert(t);
        }
        groups.push(GroupPlan {
            group_id: planned.group_id,
            display_name: planned.display_name,
            options: PlanOptions { add_only: mapping.add_only, remove_only: mapping.remove_only },
            inputs: records,
            precondition: result.precondition,
            counts: Counts::tally(&result.changes, &result.not_acted_on),
            changes: result.changes,
            not_acted_on: result.not_acted_on,
        });
    }
    // The inputs are no longer needed: free them before the plan is encoded.
    drop(user_cache);
    let plan = Plan {
        format: plan::FORMAT_NAME.into(),
        format_version: plan::FORMAT_VERSION.into(),
        plan_id,
        created_at,
        expires_at: created_at + expires_in,
        signer,
        tool_version: crate::tool_version(),
        tenant_id,
        groups,
    };
    plan.validate().map_err(|e| Error::Internal(format!("the plan failed its own checks: {e}")))?;
    let bytes = plan::encode(&plan, format);
    let signature = key
        .sign(crate::trust::PLAN_NAMESPACE, &bytes)
        .map_err(|e| Error::Internal(format!("signing with {} failed: {e}", key_path.display())))?;
    crate::atomic_write::write_together(&[(&out, &bytes), (&sig_path, signature.as_bytes())])?;

    for warning in &warnings {
        eprintln!("warning: {warning}");
    }

    print_result(&plan, &out, &sig_path, &bytes, args.json);
    Ok(())
}

fn print_result(plan: &Plan, out: &Path, sig: &Path, bytes: &[u8], json: bool) {
    if json {
        let sha256 = plan::precondition::sha256_hex(bytes);
        let groups: Vec<serde_json::Value> = plan
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "group_id": g.group_id,
                    "display_name": g.display_name,
                    "member_count": g.precondition.member_count,
                    "counts": g.counts,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "plan": out.display().to_string(),
            "signature": sig.display().to_string(),
            "plan_id": plan.plan_id,
            "plan_sha256": sha256,
            "signer": plan.signer,
            "expires_at": crate::plan::timestamp::format(&plan.expires_at),
            "groups": groups,
        });
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
        return;
    }
    let (adds, removes) = plan.totals();
    println!("Wrote {} and {}", out.display(), sig.display());
    println!(
        "Plan {}: {adds} adds, {removes} removes, signed by {}, valid until {}",
        plan.plan_id,
        plan.signer,
        plan.expires_at.format("%Y-%m-%d %H:%M UTC")
    );
    println!("{}", crate::report::summary_table(plan, 80));
    let skipped: u64 = plan.groups.iter().map(|g| g.counts.not_acted_on_total()).sum();
    if skipped > 0 {
        let by_kind: Vec<String> = crate::plan::SkipKind::ALL
            .iter()
            .filter_map(|kind| {
                let n: u64 = plan.groups.iter().filter_map(|g| g.counts.not_acted_on.get(kind)).sum();
                (n > 0).then(|| format!("{n} {}", kind.label()))
            })
            .collect();
        println!("{skipped} entries will not be acted on: {}.", by_kind.join(", "));
    }
    println!("Review it with: writeback show {}", out.display());
    println!("Then hand {} and {} to your IT admin.", out.display(), sig.display());
}

/// Merges the config's mappings with the flags.
fn mappings(args: &PlanArgs, config: Option<&Config>) -> Result<Vec<Mapping>> {
    let defaults = config.map(|c| c.defaults.clone()).unwrap_or_default();
    let adhoc = args.group.is_some() || args.contacts.is_some() || args.list.is_some();
    let mut selected: Vec<SyncMapping> = match config {
        Some(config) if !args.syncs.is_empty() => {
            let mut out = Vec::new();
            for name in &args.syncs {
                let found = config.sync.iter().find(|s| s.name.as_deref() == Some(name.as_str())).ok_or_else(|| {
                    let names: Vec<&str> = config.sync.iter().filter_map(|s| s.name.as_deref()).collect();
                    Error::Usage(format!(
                        "{} has no [[sync]] named '{name}' (it has: {})",
                        config.path.display(),
                        names.join(", ")
                    ))
                })?;
                out.push(found.clone());
            }
            out
        }
        Some(config) if !adhoc => config.sync.clone(),
        _ => vec![SyncMapping::default()],
    };
    if selected.is_empty() {
        return Err(Error::Usage(
            "nothing to plan: give --group and --contacts (or --list), or a config with [[sync]] entries".into(),
        ));
    }
    if adhoc && selected.len() > 1 {
        return Err(Error::Usage(
            "--group, --contacts and --list describe one mapping, but the config has several: pick one with --sync NAME"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for (index, sync) in selected.iter_mut().enumerate() {
        let name = sync.name.clone().unwrap_or_else(|| format!("mapping {}", index + 1));
        let group = args.group.clone().or(sync.group.clone()).ok_or_else(|| {
            Error::Usage(format!("{name}: no group: pass --group ID (or set group in the [[sync]] entry)"))
        })?;
        let contacts = match (&args.contacts, &args.list) {
            (Some(path), _) => ContactsSource::Csv(path.clone()),
            (None, Some(list)) => ContactsSource::Api(list.clone()),
            (None, None) => match (&sync.contacts, &sync.list) {
                (Some(path), _) => ContactsSource::Csv(path.clone()),
                (None, Some(list)) => ContactsSource::Api(list.clone()),
                (None, None) => {
                    return Err(Error::Usage(format!(
                        "{name}: no list: pass --contacts FILE (PoliteMail export) or --list NAME (PoliteMail API)"
                    )))
                }
            },
        };
        let members =
            args.members.clone().or(sync.members.clone()).map(DirectorySource::Csv).unwrap_or(DirectorySource::Graph);
        let users = args
            .users
            .clone()
            .or(sync.users.clone())
            .or(defaults.users.clone())
            .map(DirectorySource::Csv)
            .unwrap_or(DirectorySource::Graph);
        let add_only = args.add_only || (sync.add_only && !args.remove_only);
        let remove_only = args.remove_only || (sync.remove_only && !args.add_only);
        if add_only && remove_only {
            return Err(Error::Usage(format!("{name}: add_only and remove_only cannot both be set")));
        }
        out.push(Mapping {
            name,
            group,
            group_name: args.group_name.clone().or(sync.group_name.clone()),
            contacts,
            members,
            users,
            email_column: args.email_column.clone().or(sync.email_column.clone()),
            add_only,
            remove_only,
            keep: args.keep.clone().or(sync.keep.clone()),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for mapping in &out {
        if !seen.insert(mapping.group.to_lowercase()) {
            return Err(Error::Usage(format!(
                "group {} appears in two mappings; one plan holds each group once",
                mapping.group
            )));
        }
    }
    Ok(out)
}

/// Reads one mapping's inputs from files, Microsoft Graph and the PoliteMail API, as the mapping says.
fn gather(
    mapping: &Mapping,
    user_cache: &mut HashMap<PathBuf, (std::sync::Arc<Vec<DirectoryUser>>, InputRecord)>,
    services: &mut Services,
) -> Result<GroupInputs> {
    let contacts = match &mapping.contacts {
        ContactsSource::Csv(path) => politemail_csv::read(path, mapping.email_column.as_deref())?,
        ContactsSource::Api(list) => {
            let pm = services.politemail()?;
            services.block_on(async {
                let list = pm.find_list(list).await?;
                pm.contacts(&list).await
            })??
        }
    };
    let uses_graph = mapping.members == DirectorySource::Graph || mapping.users == DirectorySource::Graph;
    let mut warnings = Vec::new();
    let mut tenant_id = None;
    let mut live_group = None;
    let (group_id, display_name) = if uses_graph {
        let graph = services.graph()?;
        let (group, tenant) = services.block_on(async {
            Ok::<_, GraphError>((graph.find_group(&mapping.group).await?, graph.tenant_id().await?))
        })??;
        match group.manageability() {
            Ok(w) => warnings.extend(w),
            Err(reason) => {
                return Err(Error::GroupNotManageable(format!(
                    "{}: {reason}; writeback will not plan changes to it",
                    mapping.name
                )))
            }
        }
        tenant_id = Some(tenant);
        let name = Some(group.display_name.clone()).filter(|n| !n.is_empty()).or(mapping.group_name.clone());
        let id = group.id.clone();
        live_group = Some((graph, group));
        (id, name)
    } else {
        let id = ObjectId::parse(&mapping.group).map_err(|_| {
            Error::Usage(format!(
                "{}: --group '{}' is not an object id; with both export files the group is named by its object id \
                 (names need Graph)",
                mapping.name, mapping.group
            ))
        })?;
        (id, mapping.group_name.clone())
    };
    // Member users as Graph describes them: with users from Graph, they let removals carry the same flags
    // (disabled, guest) as they would with the users export, which lists every user.
    let mut member_users = Vec::new();
    let (members, members_input) = match (&mapping.members, &live_group) {
        (DirectorySource::Csv(path), _) => entra_csv::read_members(path)?,
        (DirectorySource::Graph, Some((graph, group))) => {
            let (members, users) = services.block_on(graph.list_members_detailed(&group.id))??;
            member_users = users;
            let input = graph.members_input(group, &members);
            (members, input)
        }
        (DirectorySource::Graph, None) => return Err(Error::Internal("Graph members without a Graph group".into())),
    };
    let (users, users_input) = match (&mapping.users, &live_group) {
        (DirectorySource::Csv(path), _) => match user_cache.get(path) {
            Some(cached) => cached.clone(),
            None => {
                let (users, input) = entra_csv::read_users(path)?;
                let entry = (std::sync::Arc::new(users), input);
                user_cache.insert(path.clone(), entry.clone());
                entry
            }
        },
        (DirectorySource::Graph, Some((graph, _))) => {
            let mut emails: Vec<Email> = contacts.contacts.iter().filter_map(|c| Email::parse(&c.email).ok()).collect();
            emails.sort();
            emails.dedup();
            let mut users = services.block_on(graph.resolve_users(&emails))??;
            let input = graph.users_input(emails.len(), &users);
            let known: std::collections::HashSet<ObjectId> = users.iter().map(|u| u.id.clone()).collect();
            users.extend(member_users.into_iter().filter(|u| !known.contains(&u.id)));
            (std::sync::Arc::new(users), input)
        }
        (DirectorySource::Graph, None) => return Err(Error::Internal("Graph users without a Graph client".into())),
    };
    let inputs = vec![contacts.input.clone(), members_input, users_input];
    Ok(GroupInputs { group_id, display_name, contacts, members, users, inputs, tenant_id, warnings })
}

/// One mapping's reconciliation and what the plan records about its inputs.
struct Planned {
    group_id: ObjectId,
    display_name: Option<String>,
    records: Vec<InputRecord>,
    tenant_id: Option<String>,
    warnings: Vec<String>,
    result: crate::reconcile::Reconciliation,
}

fn reconcile_options(mapping: &Mapping, keep: KeepList) -> ReconcileOptions {
    ReconcileOptions { add_only: mapping.add_only, remove_only: mapping.remove_only, keep }
}

fn read_keep_of(mapping: &Mapping) -> Result<(KeepList, Option<InputRecord>)> {
    match &mapping.keep {
        Some(path) => read_keep(path),
        None => Ok((KeepList::default(), None)),
    }
}

/// Plans a mapping whose three inputs are all files without holding the list or the members in memory: the users
/// are read (or taken from the cache) and indexed, then the contacts and the members are streamed through the
/// [`Reconciler`]. `None` when an input is not a file. The plan is the one [`gather`] and [`reconcile`] make.
///
/// The files are read in another order than [`gather`] reads them (users first); when one of them is wrong,
/// [`gather`] reads them again in its order, so that the error reported is the one it always reported.
fn plan_from_files(
    mapping: &Mapping,
    user_cache: &mut HashMap<PathBuf, (std::sync::Arc<Vec<DirectoryUser>>, InputRecord)>,
    services: &mut Services,
) -> Result<Option<Planned>> {
    let (ContactsSource::Csv(contacts_path), DirectorySource::Csv(members_path), DirectorySource::Csv(users_path)) =
        (&mapping.contacts, &mapping.members, &mapping.users)
    else {
        return Ok(None);
    };
    let streamed = (|| -> Result<_> {
        let group_id = ObjectId::parse(&mapping.group).map_err(|_| Error::Internal("not an object id".into()))?;
        let (users, users_input) = match user_cache.get(users_path) {
            Some(cached) => cached.clone(),
            None => {
                let (users, input) = entra_csv::read_users(users_path)?;
                let entry = (std::sync::Arc::new(users), input);
                user_cache.insert(users_path.clone(), entry.clone());
                entry
            }
        };
        let mut reconciler = Reconciler::new(&users);
        let email_column = mapping.email_column.as_deref();
        let contacts_input = pipelined(
            |each| politemail_csv::read_each(contacts_path, email_column, each),
            |contact| reconciler.add_contact(&contact),
        )?;
        let members_input = pipelined(
            |each| entra_csv::read_members_each(members_path, each),
            |member| reconciler.add_member(&member),
        )?;
        let (keep, keep_record) = read_keep_of(mapping)?;
        let result = reconciler.finish(&reconcile_options(mapping, keep));
        let mut records = vec![contacts_input, members_input, users_input];
        records.extend(keep_record);
        Ok(Planned {
            group_id,
            display_name: mapping.group_name.clone(),
            records,
            tenant_id: None,
            warnings: Vec::new(),
            result,
        })
    })();
    match streamed {
        Ok(planned) => Ok(Some(planned)),
        Err(error) => {
            // Let the ordinary path find the first error in its own order (the keep list comes after the inputs).
            gather(mapping, user_cache, services)?;
            read_keep_of(mapping)?;
            Err(error)
        }
    }
}

/// Runs `read`, which hands out items one at a time, on a second thread, and `each` on this one, so that parsing
/// a file and using its rows overlap. Items travel in small batches through a bounded channel: memory stays flat.
/// Returns what `read` returns, once `each` has seen every item it handed out.
fn pipelined<T: Send, R: Send>(
    read: impl FnOnce(&mut dyn FnMut(T)) -> Result<R> + Send,
    mut each: impl FnMut(T),
) -> Result<R> {
    const BATCH: usize = 1024;
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<T>>(8);
        let reader = scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let result = read(&mut |item| {
                batch.push(item);
                if batch.len() == BATCH {
                    // The receiver lives until this thread ends, so sending cannot fail.
                    let _ = sender.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            });
            if !batch.is_empty() {
                let _ = sender.send(batch);
            }
            result
        });
        for batch in receiver {
            batch.into_iter().for_each(&mut each);
        }
        reader.join().unwrap_or_else(|_| Err(Error::Internal("the thread reading an input stopped".into())))
    })
}

fn read_keep(path: &Path) -> Result<(KeepList, Option<InputRecord>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        Error::input_at(path, line, "not UTF-8 text; save the keep list as UTF-8")
    })?;
    let keep = KeepList::parse(text).map_err(|bad| {
        let (line, entry) = &bad[0];
        Error::input_at(path, *line, format!("'{entry}' is neither an object id nor a user principal name"))
    })?;
    let record = InputRecord {
        role: InputRole::Keep,
        description: format!("keep list {}", path.display()),
        sha256: plan::precondition::sha256_hex(&bytes),
    };
    Ok((keep, Some(record)))
}
