//! [`ModelRef`]: what a command's model flag names, a local path or a Hub repository.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::cache;
use crate::error::HubError;

/// The revision a [`ModelRef::Hub`] without `@REVISION` means.
pub const DEFAULT_REVISION: &str = "main";

/// A model as a command line names it: a file or directory here, or a repository on
/// the Hugging Face Hub, found in (or downloaded into) the Hugging Face cache.
///
/// [`ModelRef::parse`] decides. Anything that exists here, in any way (a file, a
/// directory, a symbolic link, even a broken one or a loop), is a path and is never
/// taken for a repository: reading it then fails with the loader's own error. Only text
/// that exists nowhere here and reads as `OWNER/NAME` (see [`cache::is_repo_id`]),
/// optionally followed by `@REVISION` (a branch, tag or commit; default `main`), is a
/// repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelRef {
    /// A local file or directory (which need not exist).
    Path(PathBuf),
    /// A repository of the Hub at a revision.
    Hub {
        /// `OWNER/NAME`.
        repo: String,
        /// A branch, tag or commit.
        revision: String,
    },
}

impl ModelRef {
    /// What `text` names, relative to the current directory: see [`ModelRef`].
    pub fn parse(text: impl AsRef<OsStr>) -> Self {
        let text = text.as_ref();
        Self::classify(text, Path::new(text))
    }

    /// What `text` names, with relative paths taken from `base` (a path's
    /// [`ModelRef::Path`] is then `base` joined with `text`).
    pub fn parse_in(base: &Path, text: impl AsRef<OsStr>) -> Self {
        let text = text.as_ref();
        Self::classify(text, &base.join(text))
    }

    /// A repository reference, if `repo` reads as `OWNER/NAME` and `revision` as a
    /// branch, tag or commit name (ASCII letters, digits, `-`, `_`, `.`; no leading `.`
    /// or `-`).
    pub fn hub(repo: &str, revision: &str) -> Option<Self> {
        (cache::is_repo_id(repo) && cache::is_name(revision)).then(|| Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `text` (whose path, as seen from here, is `local`) as a repository when nothing
    /// is at `local` and it reads as one; else the path `local`.
    fn classify(text: &OsStr, local: &Path) -> Self {
        // `symlink_metadata` does not follow links: a dangling link or a loop exists.
        let exists = std::fs::symlink_metadata(local).is_ok();
        if !exists && let Some(text) = text.to_str() {
            let (repo, revision) = text.split_once('@').unwrap_or((text, DEFAULT_REVISION));
            if let Some(hub) = Self::hub(repo, revision) {
                return hub;
            }
        }
        Self::Path(local.to_path_buf())
    }

    /// Whether this is a repository of the Hub.
    pub fn is_hub(&self) -> bool {
        matches!(self, Self::Hub { .. })
    }

    /// The model's local path: a [`ModelRef::Path`] as it is (unchecked), a
    /// [`ModelRef::Hub`] through [`cache::resolve`]: its snapshot in the cache the
    /// environment names, downloaded there first when missing (from `$HF_ENDPOINT` or
    /// the Hub, with `$HF_TOKEN`) unless `HF_HUB_OFFLINE` forbids it or the crate was
    /// built without its `download` feature.
    pub fn resolve(&self) -> Result<PathBuf, HubError> {
        match self {
            Self::Path(path) => Ok(path.clone()),
            Self::Hub { repo, revision } => cache::resolve(repo, revision, None),
        }
    }

    /// [`ModelRef::resolve`] with the cache `cache` and the endpoint `endpoint` (default
    /// `$HF_ENDPOINT` or the Hub) instead of the environment's.
    pub fn resolve_in(&self, cache: &Path, endpoint: Option<&str>) -> Result<PathBuf, HubError> {
        match self {
            Self::Path(path) => Ok(path.clone()),
            Self::Hub { repo, revision } => cache::resolve_in(cache, repo, revision, endpoint),
        }
    }
}

/// [`ModelRef::parse`]; never fails.
impl std::str::FromStr for ModelRef {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

/// The path, or `OWNER/NAME` (with `@REVISION` unless it is `main`): what
/// [`ModelRef::parse`] reads back.
impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Hub { repo, revision } if revision == DEFAULT_REVISION => f.write_str(repo),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repo: &str, revision: &str) -> ModelRef {
        ModelRef::Hub {
            repo: repo.into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn text_that_exists_nowhere_and_reads_as_an_id_is_a_repository() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path();
        assert_eq!(
            ModelRef::parse_in(base, "owner/name"),
            hub("owner/name", "main")
        );
        assert_eq!(
            ModelRef::parse_in(base, "Qwen/Qwen3-0.6B@v1.0"),
            hub("Qwen/Qwen3-0.6B", "v1.0")
        );
        for path in [
            "./owner/name",
            "owner/name/",
            "a/b/c",
            "runs",
            "../x/y",
            "owner/name@",
            "owner/name@..",
            "owner/name@refs/pr/1",
            "owner/na me",
        ] {
            assert_eq!(
                ModelRef::parse_in(base, path),
                ModelRef::Path(base.join(path)),
                "{path}"
            );
        }
        assert_eq!(
            ModelRef::parse("/no/such/path"),
            ModelRef::Path("/no/such/path".into())
        );
    }

    #[test]
    fn anything_that_exists_is_a_path() {
        let base = tempfile::tempdir().unwrap();
        let owner = base.path().join("owner");
        std::fs::create_dir(&owner).unwrap();
        std::fs::create_dir(owner.join("dir")).unwrap();
        std::fs::write(owner.join("file"), "").unwrap();
        for name in ["dir", "file"] {
            let text = format!("owner/{name}");
            assert_eq!(
                ModelRef::parse_in(base.path(), &text),
                ModelRef::Path(owner.join(name)),
                "{text}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn broken_links_and_link_loops_are_paths() {
        use std::os::unix::fs::symlink;
        let base = tempfile::tempdir().unwrap();
        let owner = base.path().join("owner");
        std::fs::create_dir(&owner).unwrap();
        symlink("loop-b", owner.join("loop-a")).unwrap();
        symlink("loop-a", owner.join("loop-b")).unwrap();
        symlink("self", owner.join("self")).unwrap();
        symlink("missing", owner.join("broken")).unwrap();
        for name in ["loop-a", "self", "broken"] {
            let text = format!("owner/{name}");
            assert!(!owner.join(name).exists(), "{text} does not resolve");
            assert_eq!(
                ModelRef::parse_in(base.path(), &text),
                ModelRef::Path(owner.join(name)),
                "{text}"
            );
        }
        // Also relative to the current directory, given as a path to parse.
        let text = owner.join("loop-a");
        assert_eq!(ModelRef::parse(&text), ModelRef::Path(text.clone()));
    }

    #[cfg(unix)]
    #[test]
    fn text_that_is_not_unicode_is_a_path() {
        use std::os::unix::ffi::OsStrExt;
        let text = OsStr::from_bytes(b"own\xffer/name");
        assert_eq!(ModelRef::parse(text), ModelRef::Path(text.into()));
    }

    #[test]
    fn references_read_back_from_their_display() {
        for text in ["owner/name", "owner/name@dev", "/some/dir"] {
            let parsed: ModelRef = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(hub("owner/name", "main").to_string(), "owner/name");
    }

    #[test]
    fn paths_resolve_to_themselves_and_repositories_to_their_snapshot() {
        let cache = tempfile::tempdir().unwrap();
        let path = ModelRef::Path("no/such/model".into());
        assert_eq!(
            path.resolve_in(cache.path(), None).unwrap(),
            PathBuf::from("no/such/model")
        );
        let snapshot = cache::repo_dir(cache.path(), "owner/name").join("snapshots/dev");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        assert_eq!(
            hub("owner/name", "dev")
                .resolve_in(cache.path(), Some("http://127.0.0.1:9"))
                .unwrap(),
            snapshot
        );
        assert!(ModelRef::hub("owner/name", "..").is_none());
        assert!(ModelRef::hub("name", "main").is_none());
    }
}
