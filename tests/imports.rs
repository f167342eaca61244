//! Imports run one way: no top-level module of `src/` reaches, through `crate::`
//! paths, a module that reaches it back. A cycle is named, module by module, so the
//! edge to cut is plain. Comments and test code do not count: a test may build what
//! it needs from the layer above.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

/// The top-level modules each top-level module names as `crate::<module>`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
            (module && name != "lib" && name != "main").then_some(name)
        })
        .collect();
    let mut edges = BTreeMap::new();
    for module in &modules {
        let dir = src.join(module);
        let root = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{module}.rs"))
        };
        let mut uses = BTreeSet::new();
        for file in sources(&root) {
            if file.file_name().is_some_and(|name| name == "tests.rs") {
                continue;
            }
            let text = code_outside_tests(&std::fs::read_to_string(&file).unwrap());
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && &name != module {
                    uses.insert(name);
                }
            }
        }
        edges.insert(module.clone(), uses);
    }
    edges
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

#[test]
fn no_module_reaches_back_to_a_module_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(edges.len() > 10, "too few modules found: {edges:?}");
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
