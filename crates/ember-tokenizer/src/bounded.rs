//! Reading a model's text files with a size limit: a `tokenizer.json` is a few to a few
//! dozen megabytes (Gemma 3's, the largest common one, 33 MB), so a file far past that
//! is refused by its size before it is read whole, and a file that grows while it is
//! read (or a device such as `/dev/zero`) stops at the limit.

use std::io::Read;
use std::path::Path;

use crate::TokenizerError;

/// The largest `tokenizer.json` read.
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The largest `tokenizer_config.json` or `generation_config.json` read.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The bytes of `path`, or an error if it holds more than `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, TokenizerError> {
    let too_large = |size: String| {
        TokenizerError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{size} bytes, more than the {limit} this file may hold"),
            ),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| TokenizerError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| TokenizerError::io(path, e))?
        .len();
    if size > limit {
        return Err(too_large(size.to_string()));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TokenizerError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_over_the_limit_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, vec![b' '; 2048]).unwrap();
        assert_eq!(read_bounded(&path, 2048).unwrap().len(), 2048);
        let err = read_bounded(&path, 1024).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(err.to_string().ends_with("tokenizer.json"), "{err}");
        assert_eq!(cause, "2048 bytes, more than the 1024 this file may hold");
        // A device that never ends stops at the limit.
        let err = read_bounded(Path::new("/dev/zero"), 4096).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.starts_with("more than 4096 bytes"), "{cause}");
    }
}
