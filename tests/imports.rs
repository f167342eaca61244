//! Imports run one way. Every top-level module of `src/` sits in one of the layers
//! below and names, through `crate::` paths, only modules of its own layer or of the
//! layers under it; within a layer, no module reaches one that reaches it back. A
//! wrong edge or a cycle is named, so the edge to cut is plain. Comments and test code
//! do not count: a test may build what it needs from the layer above. ARCHITECTURE.md
//! explains the layers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, top to bottom. A module missing here fails the test: a new module
/// takes its place on purpose.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry points", &["cli", "server"]),
    ("HTTP surface and tools", &["api", "tune", "model"]),
    (
        "request handling and composition",
        &["gateway", "error", "config"],
    ),
    (
        "domain",
        &["route", "cost", "auth", "runs", "governor", "policy"],
    ),
    ("infrastructure", &["backend", "audit", "telemetry"]),
    ("foundations", &["chat", "schema", "metrics", "reload"]),
];

/// The layer of the domain and the ones under it never speak HTTP: they start here.
const FIRST_LAYER_WITHOUT_HTTP: usize = 3;

/// Every `.rs` file under `path`, or `path` itself.
fn sources(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(sources(&entry.unwrap().path()));
    }
    files
}

/// Each top-level module's code outside comments and tests, all its files together.
fn module_code(src: &Path) -> BTreeMap<String, String> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
            (module && name != "lib" && name != "main").then_some(name)
        })
        .collect();
    modules
        .into_iter()
        .map(|module| {
            let dir = src.join(&module);
            let root = if dir.is_dir() {
                dir
            } else {
                src.join(format!("{module}.rs"))
            };
            let code: String = sources(&root)
                .iter()
                .filter(|file| file.file_name().is_none_or(|name| name != "tests.rs"))
                .map(|file| code_outside_tests(&std::fs::read_to_string(file).unwrap()))
                .collect();
            (module, code)
        })
        .collect()
}

/// The top-level modules each top-level module names as `crate::<module>`.
fn graph(code: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    code.iter()
        .map(|(module, text)| {
            let uses: BTreeSet<String> = text
                .match_indices("crate::")
                .map(|(at, _)| {
                    text[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .filter(|name| code.contains_key(name) && name != module)
                .collect();
            (module.clone(), uses)
        })
        .collect()
}

/// The index in [`LAYERS`] of `module`'s layer.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Every edge that points up a layer, as `from -> to (layer -> layer)`.
fn upward_edges(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut upward = Vec::new();
    for (from, uses) in edges {
        let from_layer = layer_of(from).unwrap();
        for to in uses {
            let to_layer = layer_of(to).unwrap();
            if to_layer < from_layer {
                upward.push(format!(
                    "{from} -> {to} ({} -> {})",
                    LAYERS[from_layer].0, LAYERS[to_layer].0
                ));
            }
        }
    }
    upward
}

/// The lines of `text` that are neither comments nor inside a `#[cfg(test)]` item.
fn code_outside_tests(text: &str) -> String {
    let mut code = String::new();
    let mut depth = 0i64;
    // The depth a `#[cfg(test)]` item opened at, while inside it.
    let mut test_item: Option<i64> = None;
    let mut entered = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if test_item.is_none() && trimmed.starts_with("#[cfg(test)]") {
            test_item = Some(depth);
            entered = false;
        }
        let opens = line.matches('{').count() as i64;
        let closes = line.matches('}').count() as i64;
        depth += opens - closes;
        match test_item {
            Some(start) => {
                entered |= opens > 0;
                if entered && depth <= start {
                    test_item = None;
                }
            }
            None => {
                code.push_str(line);
                code.push('\n');
            }
        }
    }
    code
}

/// A cycle through `from`, if there is one: the modules along it, `from` first.
fn cycle_from(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut path = vec![from.to_string()];
    let mut seen = BTreeSet::new();
    fn walk(
        edges: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in &edges[&last] {
            if next == target {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(edges, target, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(edges, from, &mut path, &mut seen).then_some(path)
}

fn source_code() -> BTreeMap<String, String> {
    module_code(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn every_module_has_a_layer() {
    let code = source_code();
    assert!(code.len() > 10, "too few modules found: {:?}", code.keys());
    let unplaced: Vec<&String> = code.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules in no layer: {unplaced:?}");
    let gone: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().copied())
        .filter(|module| !code.contains_key(*module))
        .collect();
    assert!(
        gone.is_empty(),
        "layers name modules that no longer exist: {gone:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let upward = upward_edges(&graph(&source_code()));
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_domain_and_what_it_stands_on_never_speak_http() {
    let speaking: Vec<String> = source_code()
        .into_iter()
        .filter(|(module, _)| layer_of(module).is_some_and(|l| l >= FIRST_LAYER_WITHOUT_HTTP))
        .filter(|(_, code)| {
            ["axum", "hyper", "tower"]
                .iter()
                .any(|name| code.contains(&format!("{name}::")))
        })
        .map(|(module, _)| module)
        .collect();
    assert!(speaking.is_empty(), "HTTP crates used in {speaking:?}");
}

#[test]
fn an_upward_import_is_named() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        (
            "gateway".to_string(),
            BTreeSet::from(["policy".to_string()]),
        ),
        ("policy".to_string(), BTreeSet::from(["api".to_string()])),
        ("api".to_string(), BTreeSet::new()),
    ]
    .into();
    assert_eq!(
        upward_edges(&edges),
        ["policy -> api (domain -> HTTP surface and tools)"]
    );
}

#[test]
fn no_module_reaches_back_to_a_module_that_imports_it() {
    let edges = graph(&source_code());
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|module| cycle_from(&edges, module))
        .map(|cycle| format!("{} -> {}", cycle.join(" -> "), cycle[0]))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn comments_and_test_modules_are_not_imports() {
    let text = "use crate::a::X;\n/// See [`crate::b::Y`].\n#[cfg(test)]\nmod tests {\n    use crate::c::Z;\n    fn f() {}\n}\nfn g() { crate::d::w() }\n";
    let code = code_outside_tests(text);
    assert!(
        code.contains("crate::a") && code.contains("crate::d"),
        "{code}"
    );
    assert!(
        !code.contains("crate::b") && !code.contains("crate::c"),
        "{code}"
    );
}

#[test]
fn a_cycle_is_found_and_named() {
    let edge = |from: &str, to: &[&str]| {
        (
            from.to_string(),
            to.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
        )
    };
    let edges: BTreeMap<_, _> = [
        edge("api", &["gateway"]),
        edge("gateway", &["policy"]),
        edge("policy", &["gateway", "audit"]),
        edge("audit", &[]),
    ]
    .into();
    assert_eq!(
        cycle_from(&edges, "gateway").unwrap(),
        ["gateway", "policy"]
    );
    assert!(cycle_from(&edges, "api").is_none());
    assert!(cycle_from(&edges, "audit").is_none());
}
