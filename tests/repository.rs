//! The repository is self-contained: its docs, recipes and code cite only files inside it, and
//! every `§` reference names a section of `docs/algorithms.md`.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Text files a user reads or runs, by folder (recursively) or file, relative to the root.
const SOURCES: [&str; 8] = [
    "src",
    "tests",
    "scripts",
    "bench",
    "recipes",
    "docs",
    "README.md",
    "Cargo.toml",
];

fn text_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            text_files(&entry, out);
        }
    } else if std::fs::read_to_string(path).is_ok() {
        out.push(path.to_path_buf());
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for source in SOURCES {
        text_files(&Path::new(ROOT).join(source), &mut files);
    }
    assert!(files.len() > 100, "found only {} files", files.len());
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read above");
            (f, text)
        })
        .collect()
}

#[test]
fn nothing_cites_a_file_outside_the_repository() {
    // Spelled in pieces so that this file does not match itself.
    let outside = [["..", "/shared"].concat(), ["ALGORITHMS", ".md"].concat()];
    let mut found = Vec::new();
    for (file, text) in sources() {
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                found.push(format!("{}:{}: {line}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}

/// The section numbers `docs/algorithms.md` defines: `## 7 …` and `**7.3 …`.
fn algorithm_sections() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/algorithms.md"))
        .expect("docs/algorithms.md");
    text.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("## ")
                .or_else(|| line.strip_prefix("**"))?;
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            (!number.is_empty() && rest[number.len()..].starts_with(' ')).then_some(number)
        })
        .collect()
}

#[test]
fn every_section_reference_names_a_section_of_the_algorithm_reference() {
    let sections = algorithm_sections();
    assert!(sections.contains(&"7.3".to_string()) && sections.contains(&"14".to_string()));
    let mut missing = Vec::new();
    for (file, text) in sources() {
        for (n, line) in text.lines().enumerate() {
            for (i, _) in line.match_indices('§') {
                let number: String = line[i + '§'.len_utf8()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let number = number.trim_end_matches('.');
                if !number.is_empty() && !sections.iter().any(|s| s == number) {
                    missing.push(format!("{}:{}: §{number}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sections docs/algorithms.md lacks:\n{}",
        missing.join("\n")
    );
}

/// The library's layers, bottom first (src/lib.rs): a module may import only from modules of a
/// lower rank; modules of one rank are siblings and do not import each other.
const LAYERS: [(&str, u32); 20] = [
    ("error", 0),
    ("kernels", 0),
    ("names", 0),
    ("seed", 0),
    ("files", 1),
    ("device", 1),
    ("plot", 2),
    ("quant", 3),
    ("reconstruct", 4),
    ("formats", 5),
    ("layers", 6),
    ("model", 7),
    ("data", 8),
    ("eval", 9),
    ("adapters", 9),
    ("calibration", 9),
    ("train", 10),
    ("recipe", 11),
    ("pipeline", 12),
    ("lib", 13),
];

/// `src/quant/gptq.rs` → `["quant", "gptq"]`; `src/quant/mod.rs` → `["quant"]`.
fn module_path(file: &Path) -> Vec<String> {
    let relative = file
        .strip_prefix(Path::new(ROOT).join("src"))
        .expect("a file under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The modules a file's code (comments excluded) names: `crate::a::b…` as `[a, b]`, and
/// `super::b…` resolved against the file's own path.
fn imports(path: &[String], text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    // Unit tests come last in a file and may use anything below the crate root.
    let library = text.split("#[cfg(test)]").next().unwrap_or(text);
    for line in library.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" // ").next().unwrap_or(code);
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let first = ident(rest);
            let second = rest[first.len()..]
                .strip_prefix("::")
                .map(ident)
                .unwrap_or_default();
            out.push(
                [first, second]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        for (i, _) in code.match_indices("super::") {
            if i >= 2 && &code[i - 2..i] == "::" {
                continue;
            }
            let name = ident(&code[i + "super::".len()..]);
            // `super` of a file's top-level items is its parent module (`quant` for quant/gptq.rs);
            // inside a file's `mod tests` it is the file itself, which names nothing new.
            if path.len() >= 2 && !name.is_empty() {
                out.push(vec![path[0].clone(), name]);
            }
        }
    }
    out
}

fn library_files() -> Vec<(Vec<String>, String)> {
    let mut files = Vec::new();
    text_files(&Path::new(ROOT).join("src"), &mut files);
    files
        .into_iter()
        .map(|f| {
            (
                module_path(&f),
                std::fs::read_to_string(&f).expect("read above"),
            )
        })
        .filter(|(path, _)| path[0] != "cli" && path[0] != "main")
        .collect()
}

/// Every import of `files` that does not point to a lower layer, as `from imports to`.
fn upward_imports(files: &[(Vec<String>, String)]) -> Vec<String> {
    let rank = |module: &str| LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r);
    let mut upward = Vec::new();
    for (path, text) in files {
        let from =
            rank(&path[0]).unwrap_or_else(|| panic!("module `{}` is missing from LAYERS", path[0]));
        for import in imports(path, text) {
            if import[0] == path[0] {
                continue;
            }
            // Names that are no module (`crate::Error`, a re-export of the lowest layer) pass.
            if rank(&import[0]).is_some_and(|to| to >= from) {
                upward.push(format!("{} imports {}", path.join("::"), import.join("::")));
            }
        }
    }
    upward.sort();
    upward.dedup();
    upward
}

#[test]
fn the_import_scanner_reads_code_not_comments_or_unit_tests() {
    let path = vec!["quant".to_string(), "gptq".to_string()];
    let text = "use crate::model::bert::Encoder;\n\
                // see crate::train::trainer\n\
                use super::grid::{Grid, GridSpec};\n\
                fn f() -> crate::Result<()> { Ok(()) } // crate::eval\n\
                #[cfg(test)]\n\
                mod tests { use crate::data::Task; }\n";
    let found: Vec<String> = imports(&path, text).iter().map(|i| i.join("::")).collect();
    assert_eq!(found, ["model::bert", "quant::grid", "Result"]);
    let files = [(path, text.to_string())];
    assert_eq!(upward_imports(&files), ["quant::gptq imports model::bert"]);
}

#[test]
fn modules_import_only_from_lower_layers() {
    let files = library_files();
    let edges: usize = files.iter().map(|(p, t)| imports(p, t).len()).sum();
    assert!(
        edges > 200,
        "only {edges} imports found: is the scanner reading the code?"
    );
    let upward = upward_imports(&files);
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn submodules_of_a_module_form_no_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let files = library_files();
    let submodules: BTreeSet<(String, String)> = files
        .iter()
        .filter(|(p, _)| p.len() == 2)
        .map(|(p, _)| (p[0].clone(), p[1].clone()))
        .collect();
    for (path, text) in &files {
        if path.len() != 2 {
            continue;
        }
        for import in imports(path, text) {
            if import.len() == 2
                && import[0] == path[0]
                && import[1] != path[1]
                && submodules.contains(&(import[0].clone(), import[1].clone()))
            {
                edges
                    .entry((path[0].clone(), path[1].clone()))
                    .or_default()
                    .insert(import[1].clone());
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &(String, String),
        edges: &BTreeMap<(String, String), BTreeSet<String>>,
        stack: &mut Vec<(String, String)>,
        done: &mut BTreeSet<(String, String)>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            let names: Vec<String> = stack[at..]
                .iter()
                .map(|(m, s)| format!("{m}::{s}"))
                .collect();
            cycles.push(format!("{} → {}::{}", names.join(" → "), node.0, node.1));
            return;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(&(node.0.clone(), next.clone()), edges, stack, done, cycles);
        }
        stack.pop();
        done.insert(node.clone());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in &submodules {
        visit(node, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "circular imports:\n{}",
        cycles.join("\n")
    );
}
