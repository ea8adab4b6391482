//! Writing a plan: encoded on this thread while a second one hashes each chunk (SHA-512 for the signature, and
//! SHA-256 when asked) and writes it to a temporary file beside the target. A plan of a million members (130 MB)
//! is never held whole, and its encoding, hashing and writing overlap.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use sha2::{Digest, Sha256, Sha512};

use crate::atomic_write::Staged;
use crate::error::{Error, Result};
use crate::plan::{self, Plan, PlanFormat};

/// How many bytes travel to the writing thread at a time.
const CHUNK: usize = 1 << 20;

/// Encodes `plan` into a staged (synced, not yet renamed) file for `out`; gives the file, the SHA-512 digest of
/// its bytes, and their SHA-256 (hex) when `want_sha256`.
pub(super) fn stage_plan(
    plan: &Plan,
    format: PlanFormat,
    out: &Path,
    want_sha256: bool,
) -> Result<(Staged, [u8; 64], Option<String>)> {
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Vec<u8>>(4);
        // Written chunks come back to be filled again (fresh memory costs a page fault per 4 KiB).
        let (give_back, returned) = sync_channel::<Vec<u8>>(4);
        let writer = scope.spawn(move || {
            let mut sha512 = Sha512::new();
            let mut sha256 = want_sha256.then(Sha256::new);
            let staged = crate::atomic_write::stage_with(out, |file| {
                for chunk in receiver {
                    sha512.update(&chunk);
                    if let Some(sha256) = sha256.as_mut() {
                        sha256.update(&chunk);
                    }
                    file.write_all(&chunk)?;
                    let _ = give_back.try_send(chunk);
                }
                Ok(())
            })?;
            let sha256 = sha256.map(|h| hex::encode(h.finalize()));
            Ok::<_, Error>((staged, sha512.finalize().into(), sha256))
        });
        let mut chunks = Chunks { buffer: Vec::with_capacity(CHUNK), sender: Some(sender), returned };
        let encoded = plan::encode_to(plan, format, &mut chunks).and_then(|()| chunks.flush());
        // Closing the channel ends the writer's loop.
        drop(chunks);
        let written =
            writer.join().unwrap_or_else(|_| Err(Error::Internal("the thread writing the plan stopped".into())));
        // A failed write stops the encoding too: report the write's own error first.
        let written = written?;
        encoded.map_err(|e| Error::write(out, e))?;
        Ok(written)
    })
}

/// A writer that hands its bytes to the writing thread in chunks.
struct Chunks {
    buffer: Vec<u8>,
    sender: Option<SyncSender<Vec<u8>>>,
    returned: Receiver<Vec<u8>>,
}

impl Write for Chunks {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    // The encoder writes many short pieces (an indentation, a quote); taking each whole saves the default loop.
    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write(bytes).map(drop)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        let mut next = self.returned.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        next.clear();
        let chunk = std::mem::replace(&mut self.buffer, next);
        match &self.sender {
            Some(sender) if sender.send(chunk).is_ok() => Ok(()),
            _ => Err(std::io::Error::other("the thread writing the plan stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staged_file_and_digests_are_the_encoding() {
        let plan = crate::fixtures::sample_plan();
        let dir = tempfile::tempdir().unwrap();
        for format in [PlanFormat::Json, PlanFormat::Csv] {
            let out = dir.path().join("plan.out");
            let (staged, sha512, sha256) = stage_plan(&plan, format, &out, true).unwrap();
            crate::atomic_write::commit_together(vec![staged]).unwrap();
            let bytes = plan::encode(&plan, format);
            assert_eq!(std::fs::read(&out).unwrap(), bytes);
            assert_eq!(sha512, <[u8; 64]>::from(Sha512::digest(&bytes)));
            assert_eq!(sha256, Some(crate::plan::precondition::sha256_hex(&bytes)));
            let (staged, _, none) = stage_plan(&plan, format, &out, false).unwrap();
            assert_eq!(none, None);
            drop(staged);
        }
    }

    #[test]
    fn a_write_that_fails_is_an_error_naming_the_file() {
        let plan = crate::fixtures::sample_plan();
        let out = Path::new("/nonexistent-folder/plan.json");
        let err = stage_plan(&plan, PlanFormat::Json, out, false).err().unwrap().to_string();
        assert!(err.contains("/nonexistent-folder/plan.json"), "{err}");
    }
}
