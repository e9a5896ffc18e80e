//! The module graph: each top-level module of `src/` is treated like a crate of its own,
//! so the modules it names (`crate::NAME`, outside comments and tests) must form no
//! cycle, and the lower layers never name the daemon or the config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let name = name.strip_suffix(".rs").map(str::to_string).unwrap_or(name);
            (name != "main" && name != "lib").then_some(name)
        })
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p)
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        files.push(p)
                    }
                }
            }
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        let mut named = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // Test modules sit at the end of each file.
            let code = text.split("#[cfg(test)]").next().unwrap();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name != *module && modules.contains(&name) {
                        named.insert(name);
                    }
                }
            }
        }
        graph.insert(module.clone(), named);
    }
    graph
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    assert!(graph.len() > 10 && graph["daemon"].contains("store"), "the graph was read: {graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for n in &graph[m] {
            match state.get(n) {
                Some(1) => {
                    let start = path.iter().position(|p| p == n).unwrap();
                    return Some(path[start..].iter().cloned().chain([n.clone()]).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(n, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m)
            && let Some(cycle) = visit(m, &graph, &mut state, &mut Vec::new())
        {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn nothing_below_the_config_names_the_daemon_the_config_or_the_cli() {
    let graph = graph();
    assert!(graph.contains_key("ledger"), "the ledger is a module of its own");
    for (lower, named) in graph.iter().filter(|(m, _)| !["cli", "daemon", "config"].contains(&m.as_str())) {
        for upper in ["daemon", "config", "cli"] {
            assert!(!named.contains(upper), "{lower} names {upper}: {named:?}");
        }
    }
}
