//! Model fetching and the `warden` command itself: a Hugging Face source served
//! offline from a cache the test builds, idempotent fetches, checksum refusal, and
//! `warden serve` fetching on first start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::Spawned;
use common::repo_path;
use serde_json::{json, Value};
use warden::model::{ensure_available, FetchOptions, ModelError, ModelManifest, ModelRef};

const Q4_1_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The shipped model's original Q4_1 file, fetched through its manifest if absent.
fn original_gguf() -> PathBuf {
    let models = repo_path("models");
    let ModelRef::Manifest(mut manifest) =
        ModelRef::resolve("smollm2-135m-instruct", &models).unwrap()
    else {
        panic!("the shipped manifest is missing");
    };
    manifest.convert_to = None;
    ensure_available(&manifest, &FetchOptions::new(models)).unwrap()
}

/// An HF home whose hub cache holds `warden-test/smol` at one commit, the way hf-hub
/// lays it out (refs/main names the snapshot; the snapshot links to the file).
fn build_hf_cache(home: &Path) {
    let repo = home.join("hub/models--warden-test--smol");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink(original_gguf(), snapshot.join("smol.gguf")).unwrap();
}

fn write_manifest(models: &Path, sha256: &str) {
    std::fs::create_dir_all(models).unwrap();
    std::fs::write(
        models.join("smol-from-hub.yaml"),
        format!(
            "name: smol-from-hub\nsource: hf:warden-test/smol/smol.gguf\nfile: smol.gguf\nsha256: {sha256}\n\
             architecture: llama\nchat_template: chatml\ncontext_length: 8192\nconvert_to: q8_0\n\
             default_system_prompt: You are a helpful assistant.\n"
        ),
    )
    .unwrap();
}

fn hub_manifest(models: &Path) -> ModelManifest {
    match ModelRef::resolve("smol-from-hub", models).unwrap() {
        ModelRef::Manifest(manifest) => manifest,
        ModelRef::File(_) => panic!("expected the manifest"),
    }
}

#[test]
fn hub_source_is_served_offline_from_an_existing_cache_and_fetch_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    build_hf_cache(&home);
    let models = dir.path().join("models");
    write_manifest(&models, Q4_1_SHA256);
    let options = FetchOptions {
        models_dir: models.clone(),
        hf_home: Some(home),
        python: "python3".into(),
    };
    let manifest = hub_manifest(&models);

    let converted = ensure_available(&manifest, &options).unwrap();
    assert_eq!(converted, models.join("smol.q8_0.gguf"));
    let first = std::fs::metadata(&converted).unwrap().modified().unwrap();

    let again = ensure_available(&manifest, &options).unwrap();
    assert_eq!(again, converted);
    assert_eq!(
        std::fs::metadata(&again).unwrap().modified().unwrap(),
        first,
        "a second fetch rewrote the file"
    );
    assert!(!models.join("smol.q8_0.gguf.partial").exists());
}

#[test]
fn a_file_with_the_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    build_hf_cache(&home);
    let models = dir.path().join("models");
    write_manifest(&models, &"0".repeat(64));
    let options = FetchOptions {
        models_dir: models.clone(),
        hf_home: Some(home),
        python: "python3".into(),
    };
    let error = ensure_available(&hub_manifest(&models), &options).unwrap_err();
    assert!(matches!(error, ModelError::Checksum { .. }), "{error}");
    assert!(!models.join("smol.q8_0.gguf").exists());
}

#[test]
fn model_fetch_command_is_idempotent() {
    for _ in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["model", "fetch", "smollm2-135m-instruct", "--config"])
            .arg(repo_path("routing/warden.yaml"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8_lossy(&output.stdout);
        // Served as shipped: the manifest asks for no conversion.
        assert!(
            printed.trim().ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "{printed}"
        );
    }
}

#[tokio::test]
async fn serve_fetches_on_first_start_then_answers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    build_hf_cache(&home);
    let models = dir.path().join("models");
    write_manifest(&models, Q4_1_SHA256);
    let config = dir.path().join("warden.yaml");
    std::fs::write(
        &config,
        "agents:\n  - {id: dev, tenant: default, key_env: WARDEN_DEV_KEY}\n\
         local: {model: smol-from-hub, models_dir: models, slots: 1}\n",
    )
    .unwrap();

    let home_dir = home.display().to_string();
    let server = Spawned::start(
        &config,
        &[
            ("WARDEN_DEV_KEY", "first-start-key"),
            ("HF_HOME", &home_dir),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let base = server.base.clone();

    let client = reqwest::Client::new();
    let ready = server.wait_ready(Duration::from_secs(120)).await;
    assert!(ready, "the model never became ready");
    assert!(models.join("smol.q8_0.gguf").is_file());

    let body: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("first-start-key")
        .json(&json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{body}"
    );
    assert_eq!(body["model"], "smol-from-hub");
    drop(server);
}

#[test]
fn serve_without_keys_says_how_to_set_them() {
    let output = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(repo_path("routing/warden.yaml"))
        .env_remove("WARDEN_DEV_KEY")
        .env_remove("WARDEN_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WARDEN_DEV_KEY") && stderr.contains("export"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.yaml");
    std::fs::write(&config, "local:\n  slots: 0\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warden.yaml") && stderr.contains("local.slots"),
        "{stderr}"
    );
}
