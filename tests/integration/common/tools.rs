//! Finding the real tools some tests need (promtool, Alertmanager), with one policy: a
//! missing tool fails the test when KABAR_REQUIRE_E2E=1 or CI=true, so a green CI never
//! means "skipped"; elsewhere the test says SKIPPED loudly and returns.

use std::path::{Path, PathBuf};

/// Whether tests that need real tools must run (CI sets this).
pub fn tools_required() -> bool {
    let set = |name: &str, values: &[&str]| {
        std::env::var(name)
            .map(|v| {
                values
                    .iter()
                    .any(|want| v.trim().eq_ignore_ascii_case(want))
            })
            .unwrap_or(false)
    };
    set("KABAR_REQUIRE_E2E", &["1", "true", "yes"]) || set("CI", &["true", "1"])
}

/// The first of `names` found on PATH or in /usr/bin.
pub fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds a tool from Debian package `package`, applying the policy above.
pub fn require_tool(names: &[&str], package: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(names) {
        return Some(path);
    }
    let hint = format!("apt-get install -y --no-install-recommends {package}");
    if tools_required() {
        panic!(
            "{} is not installed: {hint} (KABAR_REQUIRE_E2E makes this test mandatory)",
            names[0]
        );
    }
    eprintln!(
        "\n==================================================================\n\
         SKIPPED: this test needs {}, found neither on PATH nor in /usr/bin.\n\
         Install it with:\n    {hint}\n\
         Set KABAR_REQUIRE_E2E=1 (CI does) to make a missing tool fail.\n\
         ==================================================================\n",
        names[0]
    );
    None
}
