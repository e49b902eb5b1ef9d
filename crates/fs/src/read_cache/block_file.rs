//! One cached block on disk: a fixed header (magic, length, checksum, the block's name)
//! followed by the data. A block is used only when all of it checks out, so a file torn by
//! a crash, truncated or scribbled on is dropped and fetched again, never served.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// Marks a block file of this format.
const MAGIC: &[u8; 8] = b"S3VRCB01";
/// Header bytes before the data.
pub(crate) const HEADER: usize = 64;

/// The identity of a block: a hash of the object's key, ETag, size and block number.
pub(crate) type BlockName = [u8; 32];

/// The file's bytes for `data`, named `name`.
pub(crate) fn encode_header(name: &BlockName, data: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    h[24..56].copy_from_slice(name);
    h
}

/// Writes `data` as block `name` to `path` (a temporary name the caller renames).
pub(crate) fn write(path: &Path, name: &BlockName, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(&encode_header(name, data))?;
    f.write_all(data)?;
    Ok(())
}

/// Why a block file was not used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Shorter or longer than its header says (a torn or truncated write).
    Length,
    /// Not a block of this format, or of another block (renamed or overwritten).
    Header,
    /// The data does not match its checksum.
    Checksum,
}

/// The data of block `name` read from `path`, verified; `Ok(Err(..))` when the file is
/// there but must not be used.
pub(crate) fn read(path: &Path, name: &BlockName) -> std::io::Result<Result<Vec<u8>, Invalid>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = [0u8; HEADER];
    if len < HEADER as u64 {
        return Ok(Err(Invalid::Length));
    }
    f.read_exact(&mut h)?;
    if &h[..8] != MAGIC || &h[24..56] != name {
        return Ok(Err(Invalid::Header));
    }
    let want = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if len - HEADER as u64 != want {
        return Ok(Err(Invalid::Length));
    }
    let mut data = vec![0u8; want as usize];
    f.read_exact(&mut data)?;
    let sum = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&data) != sum {
        return Ok(Err(Invalid::Checksum));
    }
    Ok(Ok(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_back_and_every_kind_of_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let name = [7u8; 32];
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
        write(&p, &name, &data).unwrap();
        assert_eq!(read(&p, &name).unwrap().unwrap(), data);
        assert_eq!(read(&p, &[8u8; 32]).unwrap(), Err(Invalid::Header), "another block's name");
        // One flipped byte in the middle of the data.
        let mut raw = std::fs::read(&p).unwrap();
        raw[HEADER + 50_000] ^= 1;
        std::fs::write(&p, &raw).unwrap();
        assert_eq!(read(&p, &name).unwrap(), Err(Invalid::Checksum));
        // Cut short, as a crash before the data reached the disk leaves it.
        raw[HEADER + 50_000] ^= 1;
        std::fs::write(&p, &raw[..HEADER + 4096]).unwrap();
        assert_eq!(read(&p, &name).unwrap(), Err(Invalid::Length));
        std::fs::write(&p, &raw[..10]).unwrap();
        assert_eq!(read(&p, &name).unwrap(), Err(Invalid::Length));
        // Zero-filled to its full length (a crash after the size but before the data).
        std::fs::write(&p, vec![0u8; raw.len()]).unwrap();
        assert_eq!(read(&p, &name).unwrap(), Err(Invalid::Header));
    }
}
