//! The module structure of src/, checked from the source text (no extra tooling in CI):
//! 1. no cycle among the modules (one node per file: `plan` is src/plan/mod.rs, `plan::retry`
//!    is src/plan/retry.rs); an edge is any `use` of, or `crate::`/`super::` path into, another
//!    module, and a module using its own submodule counts like any other edge;
//! 2. the pure core (model, budget, plan) imports nothing of the process, launch, CLI or
//!    NVML layers and does no I/O;
//! 3. one job per file and per function: no file over 600 lines of code, no function over 100;
//! 4. no `println!`/`print!`/`eprintln!`/`eprint!` that panics on a closed terminal (the
//!    launch/term.rs ones shadow them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules the core may not import (prefix match on the module path).
const NOT_FROM_CORE: &[&str] = &[
    "app",
    "cli",
    "launch",
    "monitor",
    "doctor",
    "script_caps",
    "record",
    "gpu::nvml",
    "cluster::peers",
];
const CORE: &[&str] = &["model", "budget", "plan"];
/// What the core may not name at all: files, processes, sockets, the runtime, NVML.
const CORE_FORBIDDEN_PATHS: &[&str] = &[
    "std::fs",
    "std::process",
    "std::net",
    "std::env",
    "tokio",
    "nvml_wrapper",
];

/// Module path ("plan::retry") -> file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" && !(prefix.is_empty() && (name == "lib" || name == "main")) {
                    p.push(name.clone());
                }
                let key = if p.is_empty() {
                    format!("crate({name})")
                } else {
                    p.join("::")
                };
                out.insert(key, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The text with comments and string literals blanked, so only code is scanned; line breaks
/// inside them are kept, so line numbers stay those of the file.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let from = i;
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i += 2;
            push_breaks(&mut out, &b[from..i.min(b.len())]);
        } else if b[i] == b'"' {
            let from = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            push_breaks(&mut out, &b[from..i.min(b.len())]);
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // Raw strings: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            push_breaks(&mut out, &b[i..j.min(b.len())]);
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '{' (lifetimes have no closing quote two bytes on).
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            // An escaped char literal such as '\'' or '\n': skip to the quote after the escape.
            let mut j = i + 3;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// One line break in `out` per line break in the blanked `skipped` text.
fn push_breaks(out: &mut String, skipped: &[u8]) {
    out.extend(skipped.iter().filter(|&&c| c == b'\n').map(|_| '\n'));
}

/// Every path a `use` item names, its `{...}` groups expanded ("crate::plan::{a, b::c}" gives
/// "crate::plan::a" and "crate::plan::b::c").
fn use_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(pos) = find_use(rest) {
        let after = &rest[pos..];
        let end = after.find(';').unwrap_or(after.len());
        let tree: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand("", &tree, &mut out);
        rest = &after[end..];
    }
    out
}

/// The byte offset just after the next `use ` keyword that starts an item.
fn find_use(code: &str) -> Option<usize> {
    find_word(code, "use ").map(|at| at + 4)
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => {
            let path = tree.split("as").next().unwrap_or(tree);
            let path = path.trim_end_matches("::*").trim_end_matches("::self");
            out.push(format!("{prefix}{path}"));
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&format!("{prefix}{head}"), &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if start < inner.len() {
                expand(&format!("{prefix}{head}"), &inner[start..], out);
            }
        }
    }
}

/// `crate::a::b`, `super::x` and `child::y` paths written inline in code (outside `use` items);
/// `children` are the submodules of the file, which code may name without `self::`.
fn inline_paths(code: &str, children: &[String]) -> Vec<String> {
    let mut without_uses = String::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use ") {
        without_uses.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = &rest[rest.find(';').unwrap_or(rest.len())..];
    }
    without_uses.push_str(rest);
    let code = without_uses.as_str();
    let mut out = Vec::new();
    let roots = ["crate".to_string(), "super".to_string()];
    for root in roots.iter().chain(children).map(|r| format!("{r}::")) {
        let root = root.as_str();
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            let before = code[..at].chars().next_back();
            from = at + root.len();
            // Not a path in a longer path, nor a visibility (`pub(in crate::app)`).
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                || code[..at].ends_with("(in ")
            {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

/// The module a path lands in, from the module `from` (None for other crates and for items of
/// `from` itself).
fn resolve(path: &str, from: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let from_segs: Vec<&str> = if from.starts_with("crate(") {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut abs: Vec<&str> = match segs.first() {
        Some(&"crate") => segs[1..].to_vec(),
        Some(&"super") => {
            let mut base = from_segs.clone();
            let mut rest = &segs[..];
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend_from_slice(rest);
            base
        }
        Some(&"self") => {
            let mut base = from_segs.clone();
            base.extend_from_slice(&segs[1..]);
            base
        }
        Some(first) => {
            // A child module named without `self::` (2018 paths); anything else is a crate.
            let mut child = from_segs.clone();
            child.push(first);
            if !mods.contains_key(&child.join("::")) {
                return None;
            }
            let mut base = from_segs.clone();
            base.extend_from_slice(&segs);
            base
        }
        None => return None,
    };
    while !abs.is_empty() {
        let key = abs.join("::");
        if mods.contains_key(&key) {
            return (key != from).then_some(key);
        }
        abs.pop();
    }
    None
}

/// The file's code outside inline modules (`None`), and each inline `mod x { ... }` body (one
/// level deep, which is all this crate uses).
fn inline_modules(code: &str) -> Vec<(Option<String>, String)> {
    let mut outer = String::new();
    let mut inner = Vec::new();
    let mut rest = code;
    loop {
        let Some(at) = find_word(rest, "mod ") else {
            outer.push_str(rest);
            break;
        };
        let after = &rest[at + 4..];
        let name: String = after
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let tail = after.trim_start()[name.len()..].trim_start();
        if !tail.starts_with('{') {
            // `mod x;`: a file module, resolved through its own file.
            outer.push_str(&rest[..at + 4]);
            rest = after;
            continue;
        }
        outer.push_str(&rest[..at]);
        let open = rest.len() - tail.len();
        let mut depth = 0;
        let mut close = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        inner.push((Some(name), rest[open + 1..close].to_string()));
        rest = &rest[(close + 1).min(rest.len())..];
    }
    let mut out = vec![(None, outer)];
    out.extend(inner);
    out
}

/// The byte offset of the next `word` that does not continue an identifier.
fn find_word(code: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = code[from..].find(word) {
        let at = from + i;
        let before = code[..at].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Module -> the modules it uses.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut edges = BTreeMap::new();
    let mut code_of = BTreeMap::new();
    for (name, file) in &mods {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let mut to = BTreeSet::new();
        // Paths inside an inline `mod x { ... }` (the tests) are relative to `name::x`.
        for (inner, text) in inline_modules(&code) {
            let from = match &inner {
                Some(m) => format!("{name}::{m}"),
                None => name.clone(),
            };
            let children: Vec<String> = mods
                .keys()
                .filter_map(|m| m.strip_prefix(&format!("{name}::")))
                .filter(|m| !m.contains("::"))
                .map(String::from)
                .collect();
            let paths = use_paths(&text)
                .into_iter()
                .chain(inline_paths(&text, &children));
            for path in paths {
                if let Some(target) = resolve(&path, &from, &mods).filter(|t| t != name) {
                    to.insert(target);
                }
            }
        }
        edges.insert(name.clone(), to);
        code_of.insert(name.clone(), code);
    }
    (edges, code_of)
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn in_any(module: &str, prefixes: &[&str]) -> bool {
    prefixes
        .iter()
        .any(|p| module == *p || module.starts_with(&format!("{p}::")))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let (edges, _) = graph();
    let found = cycles(&edges);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let inner: Vec<String> = c
                .iter()
                .map(|m| {
                    let to: Vec<&str> = edges[m]
                        .iter()
                        .filter(|t| c.contains(t))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", to.join(", "))
                })
                .collect();
            inner.join("; ")
        })
        .collect();
    assert!(found.is_empty(), "module cycles:\n  {}", shown.join("\n  "));
}

#[test]
fn the_core_imports_no_io_layer_and_does_no_io() {
    let (edges, code) = graph();
    let mut bad = Vec::new();
    for (m, to) in &edges {
        if !in_any(m, CORE) {
            continue;
        }
        for t in to.iter().filter(|t| in_any(t, NOT_FROM_CORE)) {
            bad.push(format!("{m} uses {t}"));
        }
        for p in CORE_FORBIDDEN_PATHS {
            if code[m].contains(p) {
                bad.push(format!("{m} names {p}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the core reaches out:\n  {}",
        bad.join("\n  ")
    );
}

/// The run path's settle and plan stages (app::settings, docs/design.md) take the command line,
/// the profile, the environment and the machine's facts as values: no I/O, and no use of the
/// modules that read the environment, NVML or the script.
#[test]
fn settling_and_planning_do_no_io() {
    let (edges, code) = graph();
    let mut bad = Vec::new();
    for m in ["app::settings::resolve", "app::settings::planned"] {
        let m = m.to_string();
        for t in edges[&m]
            .iter()
            .filter(|t| in_any(t, &["gpu::nvml", "script_caps", "app::settings::env"]))
        {
            bad.push(format!("{m} uses {t}"));
        }
        for p in CORE_FORBIDDEN_PATHS {
            if code[&m].contains(p) {
                bad.push(format!("{m} names {p}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "settling reaches out:\n  {}",
        bad.join("\n  ")
    );
}

/// The checker itself: it sees the edges written in the ways this crate writes them.
#[test]
fn the_checker_finds_use_trees_inline_paths_and_child_modules() {
    let code = code_only(
        "use crate::{a::{B, c::D}, e as f};\n// use crate::commented;\nlet s = \"crate::in_string\";\nfn x() { crate::g::h(); super::i::J; k::l(); }\n",
    );
    let mut paths = use_paths(&code);
    paths.extend(inline_paths(&code, &["k".to_string()]));
    assert_eq!(
        paths,
        [
            "crate::a::B",
            "crate::a::c::D",
            "crate::e",
            "crate::g::h",
            "super::i::J",
            "k::l"
        ]
    );
    let mods: BTreeMap<String, PathBuf> = ["a", "a::c", "e", "g", "p", "p::i", "p::q"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(
        resolve("crate::a::c::D", "p", &mods).as_deref(),
        Some("a::c")
    );
    assert_eq!(
        resolve("super::i::J", "p::q", &mods).as_deref(),
        Some("p::i")
    );
    assert_eq!(resolve("q::X", "p", &mods).as_deref(), Some("p::q"));
    assert_eq!(resolve("serde::Serialize", "p", &mods), None);
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["e"]),
        ("e", vec!["g"]),
        ("g", vec!["a"]),
        ("p", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&edges), vec![vec!["a", "e", "g"]]);
}

/// Every source file of src/: its path below src/ and its text.
fn source_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    modules(&src)
        .values()
        .map(|file| {
            let rel = file.strip_prefix(&src).unwrap().to_string_lossy();
            (rel.into_owned(), std::fs::read_to_string(file).unwrap())
        })
        .collect()
}

/// One job per file: no source file over 600 lines before its unit tests.
#[test]
fn no_source_file_is_over_600_lines_of_code() {
    let mut long = Vec::new();
    for (rel, text) in source_files() {
        let code = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        if code > 600 {
            long.push(format!("src/{rel}: {code} lines"));
        }
    }
    assert!(long.is_empty(), "split these:\n  {}", long.join("\n  "));
}

/// The byte offset just past the brace that closes the one at `open`.
fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The offset of the `{` that opens the item starting at `from`, or `None` where a `;` ends it
/// first (a trait method without a body); `;` inside `[u8; 4]` or `(..)` does not count.
fn body_open(code: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, &c) in code.iter().enumerate().skip(from) {
        match c {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b'{' if depth == 0 => return Some(i),
            b';' if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// The byte ranges of the `#[cfg(test)]` items (a test module, a test-only function).
fn test_items(code: &str) -> Vec<std::ops::Range<usize>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("#[cfg(test)]") {
        let at = from + i;
        if let Some(open) = body_open(b, at + "#[cfg(test)]".len()) {
            out.push(at..matching_brace(b, open));
        }
        from = at + 1;
    }
    out
}

/// Each function in `code` (comments and strings blanked) outside `#[cfg(test)]` items, as
/// (name, first line, lines from the `fn` line to its closing brace), nested ones included.
fn function_lengths(code: &str) -> Vec<(String, usize, usize)> {
    let b = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let test_only = test_items(code);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = find_word(&code[from..], "fn ") {
        let at = from + i;
        from = at + 3;
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || test_only.iter().any(|r| r.contains(&at)) {
            continue;
        }
        if let Some(open) = body_open(b, at) {
            let close = matching_brace(b, open);
            out.push((name, line_of(at), line_of(close) - line_of(at) + 1));
        }
    }
    out
}

#[test]
fn the_function_scan_counts_bodies_and_skips_test_items_literals_and_comments() {
    let code = code_only(
        "trait T {\n    fn decl(&self, a: [u8; 4]);\n}\nfn a() {\n    let s = \"}\n}\";\n    // }\n    /* {\n */\n    let c = '}';\n}\n#[cfg(test)]\nmod tests {\n    fn t() {\n    }\n}\nimpl X {\n    pub fn m<'a>(x: &'a str)\n    where\n        X: Y,\n    {\n        fn inner() {}\n    }\n}\n",
    );
    assert_eq!(
        function_lengths(&code),
        vec![
            ("a".to_string(), 4, 8),
            ("m".to_string(), 18, 6),
            ("inner".to_string(), 22, 1),
        ]
    );
}

/// One job per function: no function in src/ (methods and nested functions included, test
/// modules excluded) over 100 lines from its `fn` line to its closing brace.
#[test]
fn no_function_is_over_100_lines() {
    let mut long = Vec::new();
    for (rel, text) in source_files() {
        let code = code_only(&text);
        for (name, line, lines) in function_lengths(&code) {
            if lines > 100 {
                long.push(format!("src/{rel}:{line} {name}: {lines} lines"));
            }
        }
    }
    assert!(long.is_empty(), "split these:\n  {}", long.join("\n  "));
}

/// The printing macros that panic on a closed stdout or stderr (EIO after the terminal closed,
/// EPIPE after `| tee` died), each with its replacement in launch/term.rs.
const PANICKING_PRINTS: &[&str] = &["println", "print", "eprintln", "eprint"];

/// The printing macros `code` (comments and strings blanked, test items left out) uses bare in a
/// module that does not shadow them with the never-panicking ones (`use
/// crate::eprintln_lossy as eprintln;`), as "module: name!"; `std::println!` and the like count
/// as bare everywhere.
fn panicking_prints(code: &str) -> Vec<String> {
    let mut no_tests = code.to_string();
    for r in test_items(code).into_iter().rev() {
        no_tests.replace_range(r, "");
    }
    let mut out = Vec::new();
    for (module, body) in inline_modules(&no_tests) {
        let module = module.unwrap_or_else(|| "(file)".into());
        for name in PANICKING_PRINTS {
            let shadowed = body.contains(&format!("{name}_lossy as {name}"));
            let call = format!("{name}!");
            let mut from = 0;
            while let Some(i) = find_word(&body[from..], &call) {
                let at = from + i;
                from = at + call.len();
                if !shadowed || body[..at].ends_with("::") {
                    out.push(format!("{module}: {call}"));
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn the_print_scan_finds_unshadowed_prints_and_skips_tests_and_literals() {
    let code = code_only(
        "use crate::{eprintln_lossy as eprintln};\nfn a() { eprintln!(\"x\"); crate::println_lossy!(\"y\"); }\n// println!(\"in a comment\")\nfn b() { let s = \"print!\"; std::eprintln!(\"z\"); }\nmod inner {\n    fn c() { eprint!(\"w\"); }\n}\n#[cfg(test)]\nmod tests {\n    fn t() { println!(\"fine in tests\"); }\n}\n",
    );
    assert_eq!(
        panicking_prints(&code),
        vec!["(file): eprintln!", "inner: eprint!"]
    );
    assert!(
        panicking_prints(&code_only(
            "use crate::print_lossy as print;\nfn f() { print!(\"a\"); }\n"
        ))
        .is_empty()
    );
}

/// Never panic on a closed stdout or stderr: every `println!`, `print!`, `eprintln!` and
/// `eprint!` in src/ outside tests is the launch/term.rs one, brought in by shadowing the name
/// (`use crate::{eprintln_lossy as eprintln, println_lossy as println};`) or called by its own
/// name (`crate::eprintln_lossy!`).
#[test]
fn every_print_in_src_survives_a_closed_terminal() {
    let mut bare = Vec::new();
    for (rel, text) in source_files() {
        let code = code_only(&text);
        for found in panicking_prints(&code) {
            bare.push(format!("src/{rel} {found}"));
        }
    }
    assert!(
        bare.is_empty(),
        "these panic when the terminal is gone; add `use crate::{{eprintln_lossy as eprintln, println_lossy as println}};` (or print_lossy/eprint_lossy) to the module:\n  {}",
        bare.join("\n  ")
    );
}
