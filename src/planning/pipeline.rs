//! The path for a mapping whose three inputs are all files, on two threads: the list is read beside the users;
//! once the users are indexed, the list is resolved beside the members being read and joined to the users. The
//! list is held compactly ([`ContactBuffer`]); the members are never held, only a few bytes per member.

use std::sync::Arc;
use std::time::Instant;

use super::inputs::{gather, read_keep_of, UserCache};
use super::mapping::{ContactsSource, DirectorySource, Mapping};
use super::services::Services;
use super::{reconcile_options, MappingPlan};
use crate::directory::entra_csv;
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::phases::Phases;
use crate::reconcile::{MemberSet, Reconciler, UserIndex};
use crate::source::{politemail_csv, ContactBuffer};

/// Plans a mapping whose three inputs are all files: the users are read (or taken from the cache) while the list
/// is read, then indexed; the list is resolved by a [`Reconciler`] while a [`MemberSet`] takes the members. `None`
/// when an input is not a file. The plan is the one [`gather`] and [`crate::reconcile::reconcile`] make.
///
/// The files are read in another order than [`gather`] reads them (users first); when one of them is wrong,
/// [`gather`] reads them again in its order, so that the error reported is the one it always reported.
pub fn plan_from_files(
    mapping: &Mapping,
    user_cache: &mut UserCache,
    services: &mut Services,
    phases: &mut Phases,
) -> Result<Option<MappingPlan>> {
    let (ContactsSource::Csv(contacts_path), DirectorySource::Csv(members_path), DirectorySource::Csv(users_path)) =
        (&mapping.contacts, &mapping.members, &mapping.users)
    else {
        return Ok(None);
    };
    let streamed = (|| -> Result<_> {
        let group_id = ObjectId::parse(&mapping.group).map_err(|_| Error::Internal("not an object id".into()))?;
        let email_column = mapping.email_column.as_deref();
        // The users are read (unless cached) on this thread while the list is read on a second one.
        let cached = user_cache.get(users_path);
        let (users, contacts) = std::thread::scope(|scope| {
            let contacts = scope.spawn(|| {
                let started = Instant::now();
                let mut buffer = ContactBuffer::new();
                let input = politemail_csv::read_refs(contacts_path, email_column, |c| buffer.push(c))?;
                Ok::<_, Error>((buffer, input, started.elapsed()))
            });
            let users = match cached {
                Some(cached) => Ok(cached),
                None => entra_csv::read_user_table(users_path).map(|(users, input)| (Arc::new(users), input)),
            };
            (users, contacts.join().unwrap_or_else(|_| Err(stopped("list"))))
        });
        let (users, users_input) = users?;
        user_cache.insert(users_path, (users.clone(), users_input.clone()));
        let (contacts, contacts_input, took) = contacts?;
        phases.lap("users: read, hash, parse (list beside it)");
        phases.note("  list: read, hash, parse (second thread)", took);
        let index = UserIndex::new(&users);
        phases.lap("index (two threads)");
        // The list is resolved on this thread while the members are read and joined on a second one.
        let mut reconciler = Reconciler::new(&index);
        let members = std::thread::scope(|scope| {
            let members = scope.spawn(|| {
                let started = Instant::now();
                let mut set = MemberSet::new(&index);
                let input = entra_csv::read_member_refs(members_path, |member| set.add(member))?;
                set.settle();
                Ok::<_, Error>((set, input, started.elapsed()))
            });
            reconciler.reserve(contacts.len(), 0);
            reconciler.add_contact_refs(contacts.iter());
            members.join().unwrap_or_else(|_| Err(stopped("members")))
        });
        let contacts_count = contacts.len() as u64;
        drop(contacts);
        let (members, members_input, took) = members?;
        phases.lap("list: resolve (members beside it)");
        phases.note("  members: read, hash, parse, join, precondition (second thread)", took);
        let (keep, keep_record) = read_keep_of(mapping)?;
        let result = reconciler.finish_with(members, &reconcile_options(mapping, keep));
        phases.lap("diff");
        let mut records = vec![contacts_input, members_input, users_input];
        records.extend(keep_record);
        Ok(MappingPlan {
            group_id,
            display_name: mapping.group_name.clone(),
            records,
            tenant_id: None,
            contacts: contacts_count,
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

fn stopped(what: &str) -> Error {
    Error::Internal(format!("the thread reading the {what} stopped"))
}
