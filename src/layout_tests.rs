//! The layout's promises, checked: every source file opens with what it owns and what it
//! must not do, and none grows past what a reader can hold. Test code only.

use std::path::{Path, PathBuf};

/// Lines of code before a file's unit tests: neither blank nor a comment.
const MAX_CODE_LINES: usize = 500;

fn rust_files(folder: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).expect("read a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_source_file_is_small_and_opens_with_what_it_owns() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() >= 40, "src/ lost files: {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let name = path.strip_prefix(&src).unwrap_or(&path).display();
        let mut lines = text.lines();
        let opening = [lines.next(), lines.next()];
        assert!(
            opening
                .iter()
                .all(|line| line.is_some_and(|l| l.starts_with("//! "))),
            "src/{name} must open with two //! lines: what it owns, what it must not do"
        );
        // Everything before the file's inline unit-test module counts; a `mod tests;` line
        // declaring a test file does not end the count.
        let code = text
            .lines()
            .take_while(|line| !line.starts_with("mod tests {"))
            .filter(|line| {
                let line = line.trim_start();
                !line.is_empty() && !line.starts_with("//") && !line.starts_with("#[cfg(test)]")
            })
            .count();
        assert!(
            code <= MAX_CODE_LINES,
            "src/{name} has {code} lines of code (at most {MAX_CODE_LINES}): split it by concern"
        );
    }
}
