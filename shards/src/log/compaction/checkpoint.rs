//! The cleaner checkpoint of one partition (`cleaner-offset-checkpoint`, Kafka's name): the offset
//! below which the log is clean. It only saves work: a missing or damaged one makes the next pass
//! treat the whole log as dirty, which is correct, only slower.

use std::io::{self, Write};
use std::path::Path;

pub const FILE_NAME: &str = "cleaner-offset-checkpoint";
const MAGIC: &str = "chronik-cleaner-checkpoint v1";

/// The checkpointed clean end, if a sound checkpoint exists.
pub fn load(dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(dir.join(FILE_NAME)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let offset: i64 = lines.next()?.parse().ok()?;
    let check: u32 = lines.next()?.parse().ok()?;
    (check == crc32c::crc32c(&offset.to_be_bytes()) && offset >= 0).then_some(offset)
}

/// Writes the checkpoint atomically (temporary file, fdatasync, rename, directory fsync).
/// Blocking: run it off the reactor.
pub fn save(dir: &Path, clean_end: i64) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let text = format!(
        "{MAGIC}\n{clean_end}\n{}\n",
        crc32c::crc32c(&clean_end.to_be_bytes())
    );
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        save(dir.path(), 1234).unwrap();
        assert_eq!(load(dir.path()), Some(1234));
        let p = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&p).unwrap().replace("1234", "1235");
        std::fs::write(&p, text).unwrap();
        assert_eq!(load(dir.path()), None);
    }
}
