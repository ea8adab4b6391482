//! Writing a plan: encoded on this thread while a second one hashes each chunk (SHA-256, which the signature is
//! made over and which names the plan) and writes it to a temporary file beside the target. A plan of a million
//! members (130 MB) is never held whole, and its encoding, hashing and writing overlap.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use sha2::{Digest, Sha256};

use crate::atomic_write::Staged;
use crate::error::{Error, Result};
use crate::plan::{self, Plan, PlanFormat};

/// How many bytes travel to the writing thread at a time.
const CHUNK: usize = 1 << 20;

/// Encodes `plan` into a staged (synced, not yet renamed) file for `out`; gives the file and the SHA-256 digest of
/// its bytes.
pub(super) fn stage_plan(plan: &Plan, format: PlanFormat, out: &Path) -> Result<(Staged, [u8; 32])> {
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Vec<u8>>(4);
        // Written chunks come back to be filled again (fresh memory costs a page fault per 4 KiB).
        let (give_back, returned) = sync_channel::<Vec<u8>>(4);
        let writer = scope.spawn(move || {
            let mut sha256 = Sha256::new();
            let staged = crate::atomic_write::stage_with(out, |file| {
                for chunk in receiver {
                    sha256.update(&chunk);
                    file.write_all(&chunk)?;
                    let _ = give_back.try_send(chunk);
                }
                Ok(())
            })?;
            Ok::<_, Error>((staged, sha256.finalize().into()))
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
            let (staged, sha256) = stage_plan(&plan, format, &out).unwrap();
            crate::atomic_write::commit_together(vec![staged]).unwrap();
            let bytes = plan::encode(&plan, format);
            assert_eq!(std::fs::read(&out).unwrap(), bytes);
            assert_eq!(hex::encode(sha256), crate::plan::precondition::sha256_hex(&bytes));
        }
    }

    #[test]
    fn a_write_that_fails_is_an_error_naming_the_file() {
        let plan = crate::fixtures::sample_plan();
        let out = Path::new("/nonexistent-folder/plan.json");
        let err = stage_plan(&plan, PlanFormat::Json, out).err().unwrap().to_string();
        assert!(err.contains("/nonexistent-folder/plan.json"), "{err}");
    }
}
