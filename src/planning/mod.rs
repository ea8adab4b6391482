//! `plan` as a library operation: fully merged [`PlanRequest`] in, a signed plan on disk and its warnings out.
//!
//! ```text
//! mappings ─► inputs (files | Graph | PoliteMail API) ─► reconcile ─► Plan ─► encode ─► sign ─► plan + .sig
//! ```
//!
//! - [`mapping`]: the config's `[[sync]]` entries merged with the flags (pure).
//! - [`inputs`]: reading one mapping's contacts, group, members, users and keep list.
//! - [`pipeline`]: the path when all three inputs are files (two threads; the list and members never held as
//!   one value per row).
//! - [`live`]: the path when the members and users come from Graph (member and user pages streamed into one
//!   compact table, never held as one value per member or user).
//! - [`services`]: the Graph and PoliteMail clients and the async runtime, created on first use.
//! - `write`: the plan encoded, hashed and written to disk on two threads, never held whole.
//!
//! Nothing here reads flags, the clock or the terminal: the command line builds the request (with the time and
//! the loaded key) and renders the result.

pub mod inputs;
pub mod live;
pub mod mapping;
pub mod output;
pub mod pipeline;
pub mod services;
mod write;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use self::inputs::{gather, read_keep_of, UserCache};
use self::mapping::Mapping;
use self::services::{Endpoints, Services};
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::phases::Phases;
use crate::plan::{self, Counts, GroupPlan, InputRecord, Plan, PlanFormat, PlanOptions};
use crate::reconcile::{reconcile, KeepList, ReconcileOptions, Reconciliation};
use crate::trust::keys::SigningKey;

/// Everything one plan needs, already checked: no flag or config is read after this.
pub struct PlanRequest {
    /// The mappings, one group each, in the order the plan lists them.
    pub mappings: Vec<Mapping>,
    /// Where Graph, its sign-in endpoint and PoliteMail are.
    pub endpoints: Endpoints,
    /// JSON or CSV.
    pub format: PlanFormat,
    /// The new plan's id.
    pub plan_id: uuid::Uuid,
    /// When the plan is made (whole seconds).
    pub created_at: DateTime<Utc>,
    /// How long it stays valid.
    pub expires_in: chrono::Duration,
    /// The principal recorded as signer.
    pub signer: String,
    /// The planner's key.
    pub key: SigningKey,
    /// Where the key was read from, for messages.
    pub key_path: PathBuf,
    /// Where the plan goes; its signature goes beside it.
    pub out: PathBuf,
    /// What writing `out` may replace ([`output::check`]).
    pub output: output::OutputPolicy,
    /// `--allow-empty`: plan a list with no contacts (which removes every member).
    pub allow_empty: bool,
    /// Warn when a plan removes more than this percentage of a group (`max_removal_percent`).
    pub max_removal_percent: f64,
    /// `plan --detailed-exitcode`: write nothing when no mapping has a change ([`Planned::Unchanged`]).
    pub only_with_changes: bool,
}

/// What [`plan`] did.
pub enum Planned {
    /// The plan and its signature were written.
    Written(WrittenPlan),
    /// No mapping has a change and the request asked for a plan only when there is one
    /// ([`PlanRequest::only_with_changes`]): nothing was written.
    Unchanged {
        /// The plan that was not written (for its summary: groups, members, entries not acted on).
        plan: Plan,
        /// Things the planner should know, each prefixed with its mapping's name.
        warnings: Vec<String>,
    },
}

/// A plan written to disk with its signature.
pub struct WrittenPlan {
    /// The plan.
    pub plan: Plan,
    /// The SHA-256 (hex) of the plan file (the digest its signature is made over).
    pub sha256: String,
    /// The plan file.
    pub out: PathBuf,
    /// The signature file.
    pub signature: PathBuf,
    /// Things the planner should know, each prefixed with its mapping's name.
    pub warnings: Vec<String>,
}

/// Reads every mapping's inputs, reconciles, builds the plan, signs it and writes the plan and its signature
/// together; with [`PlanRequest::only_with_changes`], writes nothing when no mapping has a change.
pub fn plan(request: PlanRequest) -> Result<Planned> {
    // Before anything is read: the plan must not replace what matters (and the check is repeated before the write).
    output::check(&request.out, &request.output)?;
    let mut phases = Phases::start();
    let (plan, warnings) = build_timed(&request, &mut phases)?;
    if request.only_with_changes && !has_changes(&plan) {
        phases.log();
        return Ok(Planned::Unchanged { plan, warnings });
    }
    output::check(&request.out, &request.output)?;
    let (staged, digest) = write::stage_plan(&plan, request.format, &request.out)?;
    let sha256 = hex::encode(digest);
    phases.lap("plan: encode, hash, write and sync (two threads)");
    let signature = request
        .key
        .sign_digest(crate::trust::PLAN_NAMESPACE, ssh_key::HashAlg::Sha256, &digest)
        .map_err(|e| Error::Internal(format!("signing with {} failed: {e}", request.key_path.display())))?;
    let sig_path = crate::archive::signature_path(&request.out);
    let staged_signature = crate::atomic_write::stage(&sig_path, signature.as_bytes())?;
    crate::atomic_write::commit_together(vec![staged, staged_signature])?;
    phases.lap("plan: sign, write the signature, rename both");
    phases.log();
    Ok(Planned::Written(WrittenPlan { plan, sha256, out: request.out, signature: sig_path, warnings }))
}

/// True when some group of the plan has a change (an add or a remove); entries not acted on are no change.
pub fn has_changes(plan: &Plan) -> bool {
    plan.groups.iter().any(|g| !g.changes.is_empty())
}

/// The plan for the request's mappings (checked by [`Plan::validate`]) and the warnings met on the way.
pub fn build(request: &PlanRequest) -> Result<(Plan, Vec<String>)> {
    build_timed(request, &mut Phases::start())
}

/// [`build`], timing its phases.
fn build_timed(request: &PlanRequest, phases: &mut Phases) -> Result<(Plan, Vec<String>)> {
    let mut user_cache = UserCache::default();
    let mut services = Services::new(request.endpoints.clone());
    let mut groups = Vec::new();
    let mut tenant_id = None;
    let mut warnings = Vec::new();
    for mapping in &request.mappings {
        let planned = plan_mapping(mapping, &mut user_cache, &mut services, phases)?;
        if planned.contacts == 0 && !request.allow_empty {
            return Err(empty_list(mapping, &planned));
        }
        if let Some(warning) = removal_warning(&planned, request.max_removal_percent) {
            warnings.push(format!("{}: {warning}", mapping.name));
        }
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
    phases.lap("free the inputs");
    let plan = Plan {
        format: plan::FORMAT_NAME.into(),
        format_version: plan::FORMAT_VERSION.into(),
        plan_id: request.plan_id,
        created_at: request.created_at,
        expires_at: request.created_at + request.expires_in,
        signer: request.signer.clone(),
        tool_version: crate::tool_version(),
        tenant_id,
        entra_actor: services.entra_actor(),
        groups,
    };
    plan.validate().map_err(|e| Error::Internal(format!("the plan failed its own checks: {e}")))?;
    phases.lap("plan: check");
    Ok((plan, warnings))
}

/// The refusal of a list with no contacts: planned as it is, it would remove every member of the group.
fn empty_list(mapping: &Mapping, planned: &MappingPlan) -> Error {
    let location = match &mapping.contacts {
        mapping::ContactsSource::Csv(path) => path.display().to_string(),
        mapping::ContactsSource::Api(list) => format!("PoliteMail list '{}'", crate::terminal::escape(list)),
    };
    Error::EmptyList {
        location,
        message: format!(
            "{}: the list has no contacts (a header-only or failed export?); planned as it is, it would remove \
             every member of the group ({} now). Check the list, or pass --allow-empty if it really is empty",
            mapping.name, planned.result.precondition.member_count
        ),
    }
}

/// The planner's warning when the plan removes more than `max_percent` of a group's user members: the admin's
/// removal limit will refuse it, and a list that lost most of its contacts is more often a broken export than a
/// real change.
fn removal_warning(planned: &MappingPlan, max_percent: f64) -> Option<String> {
    let members = planned.result.precondition.member_count;
    let removes = planned.result.changes.iter().filter(|c| c.action == crate::plan::Action::Remove).count() as u64;
    if members == 0 || removes as f64 * 100.0 <= max_percent * members as f64 {
        return None;
    }
    let group = match &planned.display_name {
        Some(name) => format!("{} ({})", crate::terminal::escape(name), planned.group_id),
        None => planned.group_id.to_string(),
    };
    Some(format!(
        "the plan removes {removes} of the {members} members of {group} ({:.1}%), more than max_removal_percent \
         ({max_percent}%). apply will refuse it unless the admin raises the limit; check that the list export is \
         complete",
        removes as f64 * 100.0 / members as f64
    ))
}

/// One mapping's reconciliation and what the plan records about its inputs.
pub struct MappingPlan {
    /// The group's id.
    pub group_id: ObjectId,
    /// Its display name, when known.
    pub display_name: Option<String>,
    /// The input records (contacts, members, users, keep list).
    pub records: Vec<InputRecord>,
    /// The tenant, when read from Graph.
    pub tenant_id: Option<String>,
    /// How many contacts the list had (every row, valid or not).
    pub contacts: u64,
    /// Things the planner should know about the group.
    pub warnings: Vec<String>,
    /// Adds, removes, entries not acted on and the precondition.
    pub result: Reconciliation,
}

/// Plans one mapping: streamed when all its inputs are files or its members and users come from Graph, otherwise
/// gathered whole and reconciled.
fn plan_mapping(
    mapping: &Mapping,
    user_cache: &mut UserCache,
    services: &mut Services,
    phases: &mut Phases,
) -> Result<MappingPlan> {
    if let Some(planned) = pipeline::plan_from_files(mapping, user_cache, services, phases)? {
        return Ok(planned);
    }
    if let Some(planned) = live::plan_from_graph(mapping, services, phases)? {
        return Ok(planned);
    }
    let inputs = gather(mapping, user_cache, services)?;
    let (keep, keep_record) = read_keep_of(mapping)?;
    let options = reconcile_options(mapping, keep);
    let result = reconcile(&inputs.contacts.contacts, &inputs.users, &inputs.members, &options);
    let mut records = inputs.inputs;
    records.extend(keep_record);
    Ok(MappingPlan {
        group_id: inputs.group_id,
        display_name: inputs.display_name,
        records,
        tenant_id: inputs.tenant_id,
        contacts: inputs.contacts.contacts.len() as u64,
        warnings: inputs.warnings,
        result,
    })
}

/// The reconciler's options for a mapping.
fn reconcile_options(mapping: &Mapping, keep: KeepList) -> ReconcileOptions {
    ReconcileOptions { add_only: mapping.add_only, remove_only: mapping.remove_only, keep }
}
