//! The streaming path for a mapping whose three inputs are all files: the users are indexed first, then the
//! list and the members export are parsed on a second thread and handed, in batches, to the [`Reconciler`] on
//! this one. Neither the list nor the members are ever held whole.

use super::inputs::{gather, read_keep_of, UserCache};
use super::mapping::{ContactsSource, DirectorySource, Mapping};
use super::services::Services;
use super::{reconcile_options, MappingPlan};
use crate::directory::entra_csv;
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::reconcile::Reconciler;
use crate::source::politemail_csv;

/// Plans a mapping whose three inputs are all files without holding the list or the members in memory: the users
/// are read (or taken from the cache) and indexed, then the contacts and the members are streamed through the
/// [`Reconciler`]. `None` when an input is not a file. The plan is the one [`gather`] and
/// [`crate::reconcile::reconcile`] make.
///
/// The files are read in another order than [`gather`] reads them (users first); when one of them is wrong,
/// [`gather`] reads them again in its order, so that the error reported is the one it always reported.
pub fn plan_from_files(
    mapping: &Mapping,
    user_cache: &mut UserCache,
    services: &mut Services,
) -> Result<Option<MappingPlan>> {
    let (ContactsSource::Csv(contacts_path), DirectorySource::Csv(members_path), DirectorySource::Csv(users_path)) =
        (&mapping.contacts, &mapping.members, &mapping.users)
    else {
        return Ok(None);
    };
    let streamed = (|| -> Result<_> {
        let group_id = ObjectId::parse(&mapping.group).map_err(|_| Error::Internal("not an object id".into()))?;
        let (users, users_input) = user_cache.users(users_path)?;
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
        Ok(MappingPlan {
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
pub fn pipelined<T: Send, R: Send>(
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
