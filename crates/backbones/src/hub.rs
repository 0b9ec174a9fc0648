//! Resolving a pretrained-weights spec (local path or Hugging Face Hub id) to a local file.

use crate::weights::WeightsError;
use std::path::{Path, PathBuf};
#[cfg(feature = "hub")]
use std::time::Duration;

/// The file fetched from a Hub repository.
pub const HUB_FILENAME: &str = "model.safetensors";

/// Resolves `spec` to a local safetensors file.
///
/// - An existing file is returned as is; a directory must hold `model.safetensors`.
/// - A Hub id (`owner/name`, e.g. `timm/resnet50.tv_in1k`) is fetched into the normal HF cache
///   with the `hub` feature (honouring `HF_HUB_OFFLINE=1`: cache only, no network; the download
///   is bounded by `MTANET_HUB_TIMEOUT_SECS`, default 900); without the feature it is an error
///   that says to rebuild with `--features hub` or pass a local path.
pub fn resolve_pretrained(spec: &str) -> Result<PathBuf, WeightsError> {
    if let Some(path) = local_file(spec)? {
        return Ok(path);
    }
    let Some((owner, name)) = parse_hub_id(spec) else {
        return Err(WeightsError::NotFound {
            spec: spec.to_string(),
        });
    };
    fetch(owner, name, &HubOptions::from_env())
}

fn local_file(spec: &str) -> Result<Option<PathBuf>, WeightsError> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if path.is_dir() {
        let inner = path.join(HUB_FILENAME);
        return if inner.is_file() {
            Ok(Some(inner))
        } else {
            Err(WeightsError::NotFound {
                spec: inner.display().to_string(),
            })
        };
    }
    Ok(None)
}

/// `owner/name` with Hub-legal characters, not a path to a weights file.
fn parse_hub_id(spec: &str) -> Option<(&str, &str)> {
    let (owner, name) = spec.split_once('/')?;
    let legal = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let is_file_name = [".safetensors", ".pth", ".pt", ".bin", ".pkl", ".npz"]
        .iter()
        .any(|ext| name.ends_with(ext));
    (legal(owner) && legal(name) && !is_file_name).then_some((owner, name))
}

/// The HF cache root, in the order Python's `huggingface_hub` resolves it, so that a file
/// placed with `huggingface-cli download` is found: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
/// `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`, each with a
/// leading `~` expanded (the home directory from `HOME`, else the password database). Unlike
/// Python, `$VAR`s inside the values are not expanded and empty values count as unset.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache_dir_from(|k| match k {
        "HOME" => std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .or_else(|| std::env::home_dir().map(PathBuf::into_os_string)),
        _ => std::env::var_os(k).filter(|v| !v.is_empty()),
    })
}

/// [`hub_cache_dir`] with `var` as the environment.
fn hub_cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    let expand = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        match p.strip_prefix("~") {
            Ok(rest) => home.join(rest),
            Err(_) => p,
        }
    };
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return expand(dir);
    }
    if let Some(hf_home) = var("HF_HOME") {
        return expand(hf_home).join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .map(expand)
        .unwrap_or_else(|| home.join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Where a hand-placed copy of `owner/name`'s model.safetensors must go in the HF cache layout.
fn cache_hint(cache: &Path, owner: &str, name: &str) -> String {
    let repo = cache.join(format!("models--{owner}--{name}"));
    format!(
        "{} (with {} holding the revision id <rev>)",
        repo.join("snapshots")
            .join("<rev>")
            .join(HUB_FILENAME)
            .display(),
        repo.join("refs").join("main").display()
    )
}

/// Settings of a Hub fetch (from the environment in [`resolve_pretrained`]).
#[derive(Clone, Debug)]
struct HubOptions {
    offline: bool,
    cache_dir: PathBuf,
    #[cfg_attr(not(feature = "hub"), allow(dead_code))]
    timeout_secs: u64,
}

impl HubOptions {
    fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let timeout_secs = std::env::var("MTANET_HUB_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900);
        Self {
            offline,
            cache_dir: hub_cache_dir(),
            timeout_secs,
        }
    }
}

#[cfg(not(feature = "hub"))]
fn fetch(owner: &str, name: &str, opts: &HubOptions) -> Result<PathBuf, WeightsError> {
    let _ = opts.offline;
    Err(WeightsError::HubDisabled {
        spec: format!("{owner}/{name}"),
        cache_hint: cache_hint(&opts.cache_dir, owner, name),
    })
}

#[cfg(feature = "hub")]
fn fetch(owner: &str, name: &str, opts: &HubOptions) -> Result<PathBuf, WeightsError> {
    let repo = format!("{owner}/{name}");
    let hub_err = |message: String| WeightsError::Hub {
        repo: repo.clone(),
        message,
        cache_hint: cache_hint(&opts.cache_dir, owner, name),
    };
    // The cache first: answers in milliseconds and never touches the network.
    let cached = download(owner, name, &opts.cache_dir, true, Duration::from_secs(30));
    match cached {
        Ok(path) => return Ok(path),
        Err(e) if opts.offline => {
            return Err(hub_err(format!(
                "HF_HUB_OFFLINE is set and the file is not cached ({e})"
            )))
        }
        Err(_) => {}
    }
    download(
        owner,
        name,
        &opts.cache_dir,
        false,
        Duration::from_secs(opts.timeout_secs),
    )
    .map_err(hub_err)
}

/// One hf-hub call on its own thread, abandoned after `timeout` (hf-hub's first request has no
/// timeout of its own and can hang on a silent server).
#[cfg(feature = "hub")]
fn download(
    owner: &str,
    name: &str,
    cache_dir: &Path,
    local_only: bool,
    timeout: Duration,
) -> Result<PathBuf, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (owner, name, cache_dir) = (owner.to_string(), name.to_string(), cache_dir.to_path_buf());
    std::thread::Builder::new()
        .name("mtanet-hub-download".into())
        .spawn(move || {
            let result = hf_hub::HFClientBuilder::new()
                .cache_dir(cache_dir)
                .retry_max_attempts(1)
                .build_sync()
                .and_then(|client| {
                    client
                        .model(owner, name)
                        .download_file()
                        .filename(HUB_FILENAME)
                        .local_files_only(local_only)
                        .send()
                })
                .map_err(|e| e.to_string());
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start the download thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no answer within {} s (set MTANET_HUB_TIMEOUT_SECS to wait longer)",
            timeout.as_secs()
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err("the download thread stopped without an answer".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache root follows `huggingface_hub`'s order and expands a leading `~`: each case
    /// is what `huggingface_hub.constants.HF_HUB_CACHE` gives under the same environment.
    #[test]
    fn the_cache_root_is_found_as_huggingface_hub_finds_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            hub_cache_dir_from(env(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")])),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[
                ("HOME", "/home/u"),
                ("XDG_CACHE_HOME", "/x"),
                ("HF_HOME", "~/hf")
            ])),
            PathBuf::from("/home/u/hf/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[
                ("HF_HOME", "/h"),
                ("HUGGINGFACE_HUB_CACHE", "/legacy")
            ])),
            PathBuf::from("/legacy")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[
                ("HUGGINGFACE_HUB_CACHE", "/legacy"),
                ("HF_HUB_CACHE", "/c")
            ])),
            PathBuf::from("/c")
        );
    }

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(
            parse_hub_id("timm/resnet50.tv_in1k"),
            Some(("timm", "resnet50.tv_in1k"))
        );
        assert_eq!(parse_hub_id("weights/senet50.safetensors"), None);
        assert_eq!(parse_hub_id("./x/y"), None);
        assert_eq!(parse_hub_id("/abs/path"), None);
        assert_eq!(parse_hub_id("a/b/c"), None);
        assert_eq!(parse_hub_id("resnet50"), None);
    }

    #[test]
    fn local_files_and_directories_resolve_without_network(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(HUB_FILENAME);
        std::fs::write(&file, b"x")?;
        let spec = file.to_str().ok_or("utf8")?;
        assert_eq!(resolve_pretrained(spec)?, file);
        let dir_spec = dir.path().to_str().ok_or("utf8")?;
        assert_eq!(resolve_pretrained(dir_spec)?, file);
        let missing = dir.path().join("none.safetensors");
        let err = resolve_pretrained(missing.to_str().ok_or("utf8")?).expect_err("missing");
        assert!(matches!(err, WeightsError::NotFound { .. }));
        Ok(())
    }

    #[cfg(not(feature = "hub"))]
    #[test]
    fn hub_ids_need_the_feature() {
        let err = resolve_pretrained("timm/resnet50.tv_in1k").expect_err("no hub");
        let msg = err.to_string();
        assert!(msg.contains("--features hub"), "{msg}");
        assert!(msg.contains("models--timm--resnet50.tv_in1k"), "{msg}");
    }

    #[cfg(feature = "hub")]
    #[test]
    fn offline_without_cache_fails_from_the_cache_lookup_with_the_cache_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A network attempt would answer "no answer within 0 s": the message shows which path
        // was taken, whatever the machine's speed.
        let opts = HubOptions {
            offline: true,
            cache_dir: dir.path().to_path_buf(),
            timeout_secs: 0,
        };
        let err = fetch("timm", "resnet50.tv_in1k", &opts).expect_err("offline");
        let msg = err.to_string();
        assert!(
            msg.contains("HF_HUB_OFFLINE is set and the file is not cached"),
            "{msg}"
        );
        assert!(!msg.contains("no answer within"), "{msg}");
        assert!(msg.contains("models--timm--resnet50.tv_in1k"), "{msg}");
    }

    #[cfg(feature = "hub")]
    #[test]
    fn a_cached_file_is_found_offline() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("models--timm--resnet50.tv_in1k");
        let rev = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs"))?;
        std::fs::write(repo.join("refs").join("main"), rev)?;
        let snap = repo.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap)?;
        std::fs::write(snap.join(HUB_FILENAME), b"x")?;
        let opts = HubOptions {
            offline: true,
            cache_dir: dir.path().to_path_buf(),
            timeout_secs: 5,
        };
        let path = fetch("timm", "resnet50.tv_in1k", &opts)?;
        assert!(path.ends_with(HUB_FILENAME), "{}", path.display());
        Ok(())
    }
}
