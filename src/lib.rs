//! kgate: a durable event-streaming gateway from Kafka to WebSocket clients.
//!
//! The path of a record: [`kafka::ingest`] → [`codec`] → [`router`] →
//! [`session`] → [`connection`] → [`transport`].

pub mod auth;
pub mod blocking;
pub mod codec;
pub mod config;
pub mod connection;
pub mod gateway;
pub mod kafka;
pub mod limits;
pub mod logging;
pub mod mqtt;
pub mod publish;
pub mod router;
pub mod session;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod transport;

#[cfg(test)]
mod layout_tests {
    /// Every `src/...` path README.md and docs/ name exists: a file moved without its
    /// docs is a stale sentence.
    #[test]
    fn source_paths_named_in_the_docs_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut pages = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
            let path = entry.expect("docs entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
        let mut missing = Vec::new();
        let mut named = 0;
        for page in &pages {
            let text = std::fs::read_to_string(page).expect("readable page");
            for (i, _) in text.match_indices("src/") {
                // Only paths that start at a word boundary (not `benches/src/...`).
                if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '.') {
                    continue;
                }
                let path: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '_' | '.' | '-'))
                    .collect();
                let path = path.trim_end_matches('.');
                named += 1;
                if !root.join(path).exists() {
                    missing.push(format!("{}: {path}", page.display()));
                }
            }
        }
        assert!(named > 20, "the docs name source files ({named} found)");
        assert!(
            missing.is_empty(),
            "named in the docs but missing:\n{}",
            missing.join("\n")
        );
    }

    /// The library's top-level modules depend on each other without a cycle (a
    /// `crate::x` path outside tests and comments counts as a dependency on `x`).
    #[test]
    fn module_dependencies_have_no_cycle() {
        use std::collections::{BTreeMap, BTreeSet};
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&src).expect("under src");
                let top = rel.iter().next().and_then(|c| c.to_str()).unwrap_or("");
                let module = top.trim_end_matches(".rs").to_string();
                // The binary's modules are not the library's.
                if ["main", "cli", "bench", "demo", "lib"].contains(&module.as_str()) {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source");
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for (i, _) in line.match_indices("crate::") {
                        let name: String = line[i + 7..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name != module {
                            deps.entry(module.clone()).or_default().insert(name);
                        }
                    }
                }
            }
        }
        assert!(deps.len() > 8, "{deps:?}");
        // Depth-first search from each module, reporting the first cycle found.
        fn cycle(
            deps: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            let last = path.last()?.clone();
            for next in deps.get(&last).into_iter().flatten() {
                if path.contains(next) {
                    let mut found = path.clone();
                    found.push(next.clone());
                    return Some(found);
                }
                path.push(next.clone());
                if let Some(found) = cycle(deps, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        for module in deps.keys() {
            let found = cycle(&deps, &mut vec![module.clone()]);
            assert!(
                found.is_none(),
                "import cycle: {}",
                found.unwrap_or_default().join(" -> ")
            );
        }
    }
}
