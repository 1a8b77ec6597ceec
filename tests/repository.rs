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
