//! Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.
//! A reader sees the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file prepared in a temporary location, not yet visible under its final name.
pub struct Staged {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
}

/// Writes `bytes` to a temporary file beside `target` and syncs it, without making it visible yet.
pub fn stage(target: &Path, bytes: &[u8]) -> Result<Staged> {
    let mut temp = temp_beside(target)?;
    temp.write_all(bytes).map_err(|e| Error::write(target, e))?;
    temp.as_file().sync_all().map_err(|e| Error::write(target, e))?;
    Ok(Staged { temp, target: target.to_path_buf() })
}

/// Like [`stage`], with the bytes written by `write` (for files made as they are written, never held whole).
pub fn stage_with(target: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<Staged> {
    let mut temp = temp_beside(target)?;
    write(temp.as_file_mut()).map_err(|e| Error::write(target, e))?;
    temp.as_file().sync_all().map_err(|e| Error::write(target, e))?;
    Ok(Staged { temp, target: target.to_path_buf() })
}

impl Staged {
    /// Renames the staged file over its target.
    pub fn commit(self) -> Result<()> {
        let target = self.rename()?;
        sync_parent(&target);
        Ok(())
    }

    /// Renames the staged file over its target, without syncing the folder; gives the target.
    fn rename(self) -> Result<PathBuf> {
        let target = self.target;
        self.temp.persist(&target).map_err(|e| Error::write(&target, e.error))?;
        Ok(target)
    }
}

/// A new temporary file in `target`'s folder, named after it.
fn temp_beside(target: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::write(target, e))
}

/// Writes one file atomically.
pub fn write(target: &Path, bytes: &[u8]) -> Result<()> {
    stage(target, bytes)?.commit()
}

/// Writes several files so that they land together: all are staged first, then renamed in order. If a rename
/// fails, the files already renamed in this call are removed again, so a plan never lands without its
/// signature.
pub fn write_together(files: &[(&Path, &[u8])]) -> Result<()> {
    let staged = files.iter().map(|(path, bytes)| stage(path, bytes)).collect::<Result<Vec<_>>>()?;
    commit_together(staged)
}

/// Renames staged files over their targets in order, as [`write_together`] does: if a rename fails, the files
/// already renamed in this call are removed again.
pub fn commit_together(staged: Vec<Staged>) -> Result<()> {
    let mut landed: Vec<PathBuf> = Vec::new();
    for file in staged {
        match file.rename() {
            Ok(target) => landed.push(target),
            Err(e) => {
                for path in &landed {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        }
    }
    // Each folder is synced once, after all of its renames (a plan and its signature share one).
    let mut synced: Vec<&Path> = Vec::new();
    for target in &landed {
        let parent = target.parent().unwrap_or(Path::new(""));
        if !synced.contains(&parent) {
            sync_parent(target);
            synced.push(parent);
        }
    }
    Ok(())
}

fn sync_parent(target: &Path) {
    // Windows has no directory handle to flush; a rename there is durable once it returns.
    #[cfg(not(unix))]
    let _ = target;
    #[cfg(unix)]
    if let Some(parent) = target.parent() {
        let dir = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if let Ok(handle) = std::fs::File::open(dir) {
            let _ = handle.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("plan.json");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_together_lands_all() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        write_together(&[(&a, b"A"), (&b, b"B")]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"A");
        assert_eq!(std::fs::read(&b).unwrap(), b"B");
    }

    #[test]
    fn missing_folder_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("no-such-dir").join("plan.json");
        assert!(write(&target, b"x").is_err());
        assert!(!target.exists());
    }
}
