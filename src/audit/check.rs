//! `check` as a library operation: verify the plan, read each group's members from Graph (read-only rights),
//! compare ([`super::effect`]), and when every change is in effect write a `manual-verified` receipt (signed
//! with a key when one is given). An existing receipt is never replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::effect::{self, CheckReport, ManualReceiptInput};
use crate::apply::Applier;
use crate::directory::graph::{GraphClient, GraphError};
use crate::directory::GroupMember;
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::trust::{self, SigningKey, VerifiedPlan};

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The plan file.
    pub plan: PathBuf,
    /// Its signature (`None`: beside the plan).
    pub signature: Option<PathBuf>,
    /// Whose signatures to trust.
    pub allowed_signers: PathBuf,
    /// The key that signs the receipt, if any.
    pub key: Option<PathBuf>,
    /// Where the receipt goes (`None`: beside the plan).
    pub receipt_out: Option<PathBuf>,
    /// How to sign in to Microsoft Graph, and where it is.
    pub sign_in: crate::signin::SignInSettings,
    /// The time of the check.
    pub now: DateTime<Utc>,
}

/// What became of the receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptWrite {
    /// Written, with its signature when a key was given.
    Written {
        /// The receipt.
        path: PathBuf,
        /// Its signature.
        signature: Option<PathBuf>,
    },
    /// Not written: a file is there already.
    Exists(PathBuf),
    /// Not written: some change is not in effect.
    NotInEffect,
}

/// The result of a check.
#[derive(Debug)]
pub struct Checked {
    /// The verified plan.
    pub verified: VerifiedPlan,
    /// Each group's changes and whether they are in effect.
    pub report: CheckReport,
    /// What became of the receipt.
    pub receipt: ReceiptWrite,
}

impl Checked {
    /// [`Error::NotInEffect`] unless every change is in effect.
    pub fn in_effect(&self) -> Result<()> {
        if self.report.all_in_effect() {
            return Ok(());
        }
        Err(Error::NotInEffect(format!(
            "{} of the plan's {} changes are not in effect; no receipt was written",
            self.report.not_in_effect(),
            self.report.changes()
        )))
    }
}

/// Verifies the plan, reads the groups, compares, and writes the receipt when everything is in effect.
pub fn check(request: &CheckRequest) -> Result<Checked> {
    let verified =
        trust::verify_plan_files(&request.plan, request.signature.as_deref(), &request.allowed_signers, request.now)?;
    // An existing receipt is never replaced, and one of another plan is never taken for this one's (checked before
    // any request).
    let path = request.receipt_out.clone().unwrap_or_else(|| crate::archive::receipt_path(&request.plan));
    let existing = crate::apply::receipt::read_own(&path, verified.plan.plan_id, &verified.sha256)?.is_some();
    // Load the key before any request, so that a bad key fails fast.
    let key = match &request.key {
        Some(path) => Some(SigningKey::load(path)?),
        None => None,
    };
    let client = GraphClient::connect(&request.sign_in)?;
    let runtime = crate::http::runtime()?;
    let (tenant, members, live) = runtime.block_on(read_groups(&client, &verified))?;
    let mut report = CheckReport::build(&verified.plan, &members);
    for group in &mut report.groups {
        group.live_name = live.get(&group.group_id).cloned().flatten();
    }
    if !report.all_in_effect() {
        return Ok(Checked { verified, report, receipt: ReceiptWrite::NotInEffect });
    }
    if existing {
        return Ok(Checked { verified, report, receipt: ReceiptWrite::Exists(path) });
    }
    let receipt = effect::manual_receipt(
        ManualReceiptInput {
            plan: &verified.plan,
            plan_sha256: &verified.sha256,
            plan_file: request.plan.display().to_string(),
            tenant_id: Some(tenant),
            applier: Applier::current(key.as_ref()),
            checked_at: request.now,
        },
        &report,
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let signature = crate::apply::run::write_receipt(&path, &receipt, key.as_ref())?;
    Ok(Checked { verified, report, receipt: ReceiptWrite::Written { path, signature } })
}

/// What `check` reads of a plan: the tenant, each group's members, and each group's name in Graph now (by id).
type GroupReads = (String, BTreeMap<ObjectId, Vec<GroupMember>>, BTreeMap<ObjectId, Option<String>>);

/// The tenant (which must be the plan's), each group's name in Graph now and its members.
async fn read_groups(client: &GraphClient, verified: &VerifiedPlan) -> Result<GroupReads> {
    let tenant = client.tenant_id().await?;
    if let Some(planned) = &verified.plan.tenant_id {
        if !planned.eq_ignore_ascii_case(&tenant) {
            return Err(Error::TenantMismatch(format!(
                "the plan was made for tenant {planned}, but the credentials sign in to tenant {tenant}; check \
                 AZURE_TENANT_ID"
            )));
        }
    }
    let mut members = BTreeMap::new();
    let mut live = BTreeMap::new();
    for group in &verified.plan.groups {
        // The review shows Graph's name of the group, and the plan's label beside it when it differs.
        let name = match client.find_group(group.group_id.as_str()).await {
            Ok(found) => (!found.display_name.is_empty()).then_some(found.display_name),
            Err(GraphError::GroupNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        live.insert(group.group_id.clone(), name);
        let list = client.list_members(&group.group_id).await?;
        members.insert(group.group_id.clone(), list);
    }
    Ok((tenant, members, live))
}
