//! The layout rules of DESIGN.md, checked on the source tree: dependencies between the top-level
//! modules point one way, no two sibling modules import each other (directly or round a loop),
//! and no function outside tests is longer than [`MAX_FN_LINES`].
//!
//! The checks read `src/` as text: every `crate::a::b` path (and `super::b` inside module `a`)
//! outside `#[cfg(test)]` code is an edge. The binary (`src/main.rs`, `src/cli/`) sits on top and
//! is not checked for direction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function body allowed outside tests (issue 8: "no function over ~120 lines").
const MAX_FN_LINES: usize = 120;

/// The library's top-level modules, lowest layer first: a module may import only modules of a
/// strictly lower rank (DESIGN.md, "Dependency direction").
const LAYERS: &[(&str, u8)] = &[
    ("features", 0),
    ("pb", 0),
    ("model", 1),
    ("io", 1),
    ("bundle", 2),
    ("generate", 2),
    ("score", 3),
    ("train", 4),
    ("serve", 4),
];

struct Source {
    /// Module path, e.g. `["model", "tiers"]` for `src/model/tiers.rs` or `src/model/tiers/mod.rs`.
    module: Vec<String>,
    path: PathBuf,
    /// The file's text without comments, string contents and `#[cfg(test)]` items.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Blanks comments and the contents of string and char literals (keeping line breaks), so that
/// braces and paths inside them are not read as code.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"' | b'#')) && !ident_before(b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            out.extend_from_slice(b"\"\"");
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&h| h == b'#') {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == b'\n' {
                    out.push(b'\n');
                }
                j += 1;
            }
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if c == b'\'' && is_char_literal(b, i) {
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.extend_from_slice(b"' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `'x'`, `'\n'`, `'\u{..}'` are char literals; `'a` in `<'a>` is a lifetime.
fn is_char_literal(b: &[u8], i: usize) -> bool {
    match b.get(i + 1) {
        Some(b'\\') => true,
        Some(_) => {
            // One (possibly multi-byte) char, then a quote.
            let mut j = i + 1;
            j += 1;
            while j < b.len() && (b[j] & 0xC0) == 0x80 {
                j += 1;
            }
            b.get(j) == Some(&b'\'')
        }
        None => false,
    }
}

/// Removes every item that follows a `#[cfg(test)]` attribute (a `mod tests { .. }`, a test-only
/// function or `use`), keeping line breaks.
fn drop_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` at depth 0 or at the `}` closing its first `{`.
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices().skip("#[cfg(test)]".len()) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(item[..end].chars().filter(|&c| c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).expect("under src/");
        let mut module: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if module.last().is_some_and(|m| m == "mod" || m == "lib") {
            module.pop();
        }
        let is_binary = module.first().is_some_and(|m| m == "main" || m == "cli");
        let is_tests = module.iter().any(|m| m == "tests");
        if is_binary || is_tests {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        out.push(Source {
            module,
            code: drop_test_items(&strip(&text)),
            path,
        });
    }
    out
}

/// The module paths a source refers to: `crate::a::b...` and, for `super::x` / `self::x`, the
/// resolved path. Only identifier segments are kept (`crate::model::{a, b}` gives `model`).
fn references(src: &Source) -> BTreeSet<Vec<String>> {
    let mut refs = BTreeSet::new();
    let code = &src.code;
    let bytes = code.as_bytes();
    // The module a file's `super::` refers to: its parent (a file `a/b.rs` is module a::b).
    let parent: Vec<String> = src.module[..src.module.len().saturating_sub(1)].to_vec();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(k) = code[from..].find(prefix) {
            let at = from + k;
            from = at + prefix.len();
            if ident_before(bytes, at) {
                continue;
            }
            let mut path = base.clone();
            let mut rest = &code[from..];
            loop {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    break;
                }
                path.push(rest[..len].to_string());
                rest = &rest[len..];
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if !path.is_empty() {
                refs.insert(path);
            }
        }
    }
    refs
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let rank: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for src in sources() {
        let Some(own) = src.module.first() else {
            continue; // lib.rs
        };
        let Some(&own_rank) = rank.get(own.as_str()) else {
            wrong.push(format!(
                "{}: top-level module `{own}` is not in LAYERS",
                src.path.display()
            ));
            continue;
        };
        for r in references(&src) {
            let target = r[0].as_str();
            if target == own {
                continue;
            }
            match rank.get(target) {
                Some(&t) if t < own_rank => {}
                Some(_) => wrong.push(format!(
                    "{}: `{own}` imports `crate::{}` (same or higher layer)",
                    src.path.display(),
                    r.join("::")
                )),
                None => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependency direction:\n{}",
        wrong.join("\n")
    );
}

/// Edges between sibling modules (children of one parent), from every file inside each.
fn sibling_edges(sources: &[Source]) -> BTreeMap<Vec<String>, BTreeSet<(String, String)>> {
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for src in sources {
        for r in references(src) {
            // The longest common prefix of the two paths is the parent; the next segment on each
            // side names the siblings.
            let common = src
                .module
                .iter()
                .zip(&r)
                .take_while(|(a, b)| a == b)
                .count();
            if common >= src.module.len() || common >= r.len() {
                continue; // a reference to itself, an ancestor or a descendant
            }
            let (a, b) = (&src.module[common], &r[common]);
            edges
                .entry(src.module[..common].to_vec())
                .or_default()
                .insert((a.clone(), b.clone()));
        }
    }
    edges
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let sources = sources();
    let mut loops = Vec::new();
    for (parent, edges) in sibling_edges(&sources) {
        let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in &edges {
            graph.entry(a).or_default().push(b);
        }
        // A loop is an edge a -> b with a path b -> a.
        for (a, b) in &edges {
            let mut seen = BTreeSet::new();
            let mut stack = vec![b.as_str()];
            while let Some(n) = stack.pop() {
                if n == a {
                    loops.push(format!(
                        "{}: {a} -> {b} -> ... -> {a}",
                        if parent.is_empty() {
                            "crate".to_string()
                        } else {
                            parent.join("::")
                        }
                    ));
                    break;
                }
                if seen.insert(n) {
                    stack.extend(graph.get(n).into_iter().flatten());
                }
            }
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

/// Functions longer than [`MAX_FN_LINES`], outside test code: `file:line name (lines)`.
fn long_functions(src: &Source) -> Vec<String> {
    let lines: Vec<&str> = src.code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let is_item = head.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "async" | "const" | "unsafe" | "extern"
            )
        }) && !t.contains("fn(");
        if !is_item {
            continue;
        }
        let name: String = t[at + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // From the signature on, find the body's opening brace and its closing one.
        let mut depth = 0usize;
        let mut opened = false;
        'scan: for (j, l) in lines.iter().enumerate().skip(i) {
            for ch in l.chars() {
                match ch {
                    ';' if !opened && depth == 0 => break 'scan, // a declaration without body
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            let n = j - i + 1;
                            if n > MAX_FN_LINES {
                                out.push(format!(
                                    "{}:{} {name} ({n} lines)",
                                    src.path.display(),
                                    i + 1
                                ));
                            }
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let long: Vec<String> = sources().iter().flat_map(long_functions).collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_are_meant_to_see() {
    // A loop, an upward import and a long function in made-up sources must all be found, and
    // paths inside comments, strings and test code must not count.
    let src = |module: &[&str], text: &str| Source {
        module: module.iter().map(|s| s.to_string()).collect(),
        path: PathBuf::from(module.join("/")),
        code: drop_test_items(&strip(text)),
    };
    let a = src(
        &["model", "a"],
        "use super::b::X; // crate::serve::nothing\nconst S: &str = \"crate::train::x\";\n#[cfg(test)]\nmod tests { use crate::serve::Y; }\n",
    );
    let b = src(
        &["model", "b"],
        "use crate::model::a::Y;\nfn f() -> char { '{' }\n",
    );
    assert_eq!(
        references(&a),
        BTreeSet::from([vec!["model".to_string(), "b".into(), "X".into()]])
    );
    let edges = sibling_edges(&[a, b]);
    assert_eq!(
        edges.get(&vec!["model".to_string()]).map(|e| e.len()),
        Some(2),
        "{edges:?}"
    );
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let long = src(
        &["features", "x"],
        &format!("pub fn long() {{\n{body}}}\nfn short() {{}}\n"),
    );
    assert_eq!(long_functions(&long).len(), 1);
}
