//! The lock an apply holds on its plan while it runs: `<plan_id>.lock` in the ledger folder.
//!
//! The lock is the operating system's exclusive file lock (`File::try_lock`: `flock` on Unix, `LockFileEx` on
//! Windows); the file's content only names the owner (user, host, pid, start time) for the message the second
//! apply prints. The system drops the lock when its process ends, however it ends, so a lock left by a killed
//! process is free for the next apply: it finds the old owner's name still in the file, says it takes the lock
//! over, and writes its own. A clean finish empties the file. The file itself is never deleted: deleting it
//! while another process opens it would let two processes each lock a different file.
//!
//! A folder on a network share whose server does not honour these locks gives no protection; docs/apply.md
//! says so.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::plan::timestamp;

/// Who holds (or held) a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The operating-system account.
    pub user: String,
    /// The machine's name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When that apply started.
    #[serde(with = "timestamp")]
    pub started_at: DateTime<Utc>,
}

impl Owner {
    /// This process, started at `now`.
    pub fn this_process(now: DateTime<Utc>) -> Owner {
        Owner { user: os_user(), host: host_name(), pid: std::process::id(), started_at: now }
    }

    /// `user on host, pid N, started T`.
    pub fn describe(&self) -> String {
        format!(
            "{} on {}, pid {}, started {}",
            crate::terminal::escape(&self.user),
            crate::terminal::escape(&self.host),
            self.pid,
            timestamp::format(&self.started_at)
        )
    }
}

/// A lock this process holds. Dropping it empties the file and releases the lock.
#[derive(Debug)]
pub struct Held {
    file: File,
    path: PathBuf,
    /// The owner named in the file when the lock was taken: a process that ended without releasing it.
    pub taken_over: Option<Owner>,
}

impl Held {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Empty first, then unlock: a reader never sees this process named in a free lock.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_all();
        let _ = self.file.unlock();
    }
}

/// Takes the lock at `path` for `plan_id` as `owner`, or fails with [`Error::Locked`] naming the holder.
pub fn acquire(path: &Path, plan_id: Uuid, owner: Owner) -> Result<Held> {
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            action: "open the lock",
            source: e,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = read_owner(&mut file)
                .map(|o| o.describe())
                .unwrap_or_else(|| "an apply that has not written its name yet".into());
            return Err(Error::Locked(format!(
                "another apply of plan {plan_id} is running ({holder}; lock {}). Nothing was sent. Wait for it to \
                 finish, then run the same command again: it resumes what is left, or reports the plan finished",
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(Error::Io { path: path.to_path_buf(), action: "lock", source: e });
        }
    }
    let taken_over = read_owner(&mut file);
    let bytes = serde_json::to_vec(&owner).unwrap_or_default();
    let write = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    write(&mut file).map_err(|e| Error::write(path, e))?;
    Ok(Held { file, path: path.to_path_buf(), taken_over })
}

fn read_owner(file: &mut File) -> Option<Owner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The operating-system account running writeback.
pub fn os_user() -> String {
    ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "unknown-user".into())
}

/// The machine's name: `/proc/sys/kernel/hostname` or `/etc/hostname` on Linux, `COMPUTERNAME` on Windows,
/// `HOSTNAME` elsewhere.
pub fn host_name() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            user: "admin".into(),
            host: "box".into(),
            pid,
            started_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_second_holder_is_refused_with_the_owner_named_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let id = Uuid::new_v4();
        let held = acquire(&path, id, owner(11)).unwrap();
        assert_eq!(held.taken_over, None);
        let err = acquire(&path, id, owner(22)).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::LOCKED);
        let text = err.to_string();
        assert!(text.contains("admin on box, pid 11, started 2023-11-14T22:13:20Z"), "{text}");
        drop(held);
        // Released cleanly: the file is empty, so the next holder takes over nobody.
        let next = acquire(&path, id, owner(33)).unwrap();
        assert_eq!(next.taken_over, None);
    }

    #[test]
    fn a_lock_file_left_with_an_owner_but_no_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        // What a killed process leaves: its name in the file, and no lock (the system released it).
        std::fs::write(&path, serde_json::to_vec(&owner(44)).unwrap()).unwrap();
        let held = acquire(&path, Uuid::new_v4(), owner(55)).unwrap();
        assert_eq!(held.taken_over, Some(owner(44)));
        let now: Owner = serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(now.pid, 55);
    }
}
