//! The modules of phoenix-core form floors: each imports only modules on the floors below it,
//! never one that imports it back. This test reads the sources and checks it.
//!
//! A module is a file `src/x.rs` or a folder `src/x/`. Every `crate::y` path in its code (comments
//! aside) is an import of `y`; `crate::Error`, `crate::Result` and the other re-exports of
//! `lib.rs` count as imports of the module they come from. A folder counts as one module from
//! outside; inside, its files use each other through `super::z` (or `crate::x::z`) and by calling
//! the methods another file defines, and they must not form a cycle either. A folder's `mod.rs` is its root, as `lib.rs` is the crate's: it
//! declares the files and re-exports their items, and no file imports through it.
//!
//! `cargo test -p phoenix-core --test module_graph -- --nocapture` prints the floors.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a source file without its comments (everything after `//` on a line: no path this
/// test looks for is ever written inside a string).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each `prefix` in `code`: `crate::` in `crate::model::Fleet` gives
/// `model`.
fn after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            let before = code[..*at].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// The methods `code` adds to a type defined in another file (an `impl` block, at the top of the
/// file, for a type the file does not define).
fn methods_added(code: &str) -> BTreeSet<&str> {
    let defined: BTreeSet<&str> = ["struct ", "enum ", "type "]
        .iter()
        .flat_map(|k| after(code, k))
        .collect();
    let mut added = BTreeSet::new();
    let mut foreign = false;
    for line in code.lines() {
        if let Some(rest) = line.strip_prefix("impl") {
            // `impl<'a> Trait<'a> for Type {`: the type is what follows `for`, past any generics.
            let rest = match rest.strip_prefix('<') {
                Some(generic) => generic.split_once("> ").map_or(rest, |(_, r)| r),
                None => rest,
            };
            let ty = rest.rsplit(" for ").next().unwrap_or(rest).trim_start();
            let ty = ty
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next();
            foreign = ty.is_some_and(|t| !defined.contains(t));
        } else if line.starts_with('}') {
            foreign = false;
        } else if foreign {
            added.extend(after(line, "fn "));
        }
    }
    added
}

fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("a file name")
        .to_string()
}

/// `lib.rs`'s `pub use m::{A, B};` and `pub use m::A;`: A and B come from m.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            if !item.is_empty() {
                out.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// The modules a cycle runs through, if `graph` has one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(k) = path.iter().position(|n| n == node) {
            let mut found = path[k..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// Each module's floor: 0 for one that imports nothing of the crate, else one above the highest
/// floor it imports. (Only for a graph without a cycle.)
fn floors(graph: &Graph) -> BTreeMap<usize, Vec<String>> {
    fn floor(node: &str, graph: &Graph, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(f) = memo.get(node) {
            return *f;
        }
        let f = graph
            .get(node)
            .into_iter()
            .flatten()
            .map(|d| floor(d, graph, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(node.to_string(), f);
        f
    }
    let mut memo = BTreeMap::new();
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for node in graph.keys() {
        out.entry(floor(node, graph, &mut memo))
            .or_default()
            .push(node.clone());
    }
    out
}

fn show(name: &str, graph: &Graph, verb: &str) {
    println!("{name}:");
    for (floor, modules) in floors(graph) {
        let with_imports: Vec<String> = modules
            .iter()
            .map(|m| {
                let deps: Vec<&str> = graph[m].iter().map(String::as_str).collect();
                if deps.is_empty() {
                    m.clone()
                } else {
                    format!("{m} ({verb} {})", deps.join(", "))
                }
            })
            .collect();
        println!("  floor {floor}: {}", with_imports.join("; "));
    }
}

#[test]
fn the_modules_form_floors_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports = root_reexports(&code(&src.join("lib.rs")));
    let shown = |file: &Path| {
        file.strip_prefix(&src)
            .unwrap_or(file)
            .display()
            .to_string()
    };
    // Module name → its files (one for a file module; a folder's files but its mod.rs).
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut folders: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in rs_files(&src) {
        if path.is_dir() {
            let name = stem(&path);
            let files = rs_files(&path)
                .into_iter()
                .filter(|f| f.is_file())
                .collect();
            modules.insert(name.clone(), files);
            folders.insert(name, path);
        } else if path.extension().is_some_and(|e| e == "rs") && stem(&path) != "lib" {
            modules.insert(stem(&path), vec![path]);
        }
    }

    let mut problems = Vec::new();
    let mut graph: Graph = modules
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (module, files) in &modules {
        for file in files {
            for name in after(&code(file), "crate::") {
                let target = if modules.contains_key(name) {
                    name.to_string()
                } else if let Some(m) = reexports.get(name) {
                    m.clone()
                } else {
                    problems.push(format!("{}: crate::{name} is no module", shown(file)));
                    continue;
                };
                if target != *module {
                    graph.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    match cycle(&graph) {
        Some(c) => problems.push(format!("modules import each other: {}", c.join(" → "))),
        None => show("phoenix-core", &graph, "imports"),
    }

    for (folder, dir) in &folders {
        let files: BTreeMap<String, PathBuf> = rs_files(dir)
            .into_iter()
            .filter(|f| f.is_file() && stem(f) != "mod")
            .map(|f| (stem(&f), f))
            .collect();
        let mut inner: Graph = files.keys().map(|f| (f.clone(), BTreeSet::new())).collect();
        let codes: BTreeMap<&String, String> = files.iter().map(|(n, f)| (n, code(f))).collect();
        // A type's methods may be spread over the files (`impl Tx` blocks next to the concern
        // each serves): calling one is using the file that defines it.
        for (name, code) in &codes {
            for (other, other_code) in &codes {
                if other == name {
                    continue;
                }
                let calls = methods_added(other_code)
                    .into_iter()
                    .any(|m| code.contains(&format!(".{m}(")));
                if calls {
                    inner
                        .entry(name.to_string())
                        .or_default()
                        .insert(other.to_string());
                }
            }
        }
        for (name, file) in &files {
            let code = &codes[name];
            let through_crate = format!("crate::{folder}::");
            let uses = after(code, "super::")
                .into_iter()
                .chain(after(code, &through_crate));
            for used in uses {
                if files.contains_key(used) {
                    if used != name {
                        inner
                            .entry(name.clone())
                            .or_default()
                            .insert(used.to_string());
                    }
                } else if !used.is_empty() && used != "super" {
                    problems.push(format!(
                        "{}: {used} is reached through {folder}/mod.rs; import it from its file",
                        shown(file)
                    ));
                }
            }
        }
        match cycle(&inner) {
            Some(c) => problems.push(format!(
                "files of {folder}/ use each other: {}",
                c.join(" → ")
            )),
            None => show(&format!("{folder}/"), &inner, "uses"),
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
