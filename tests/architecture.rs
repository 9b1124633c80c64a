//! The house rules of src/, checked on the source text: the module graph has no cycles, only the
//! command line knows about flags, and functions stay short with few parameters. A reader (or a
//! change) that breaks one gets the place named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FUNCTION_LINES: usize = 80;
const MAX_PARAMETERS: usize = 6;

/// Every `.rs` file under src/ with its module path (`persona::screen::cache`), comments and
/// literals blanked so braces and `crate::` inside them do not count.
fn sources() -> Vec<(String, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((parts.join("::"), path, blank_comments_and_literals(&text)));
            }
        }
    }
    out.sort();
    out
}

/// Replaces comments, string and char literals by spaces (newlines kept, so line numbers hold).
fn blank_comments_and_literals(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let at = |i: usize| b.get(i).copied();
    while i < b.len() {
        if b[i] == '/' && at(i + 1) == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if b[i] == '/' && at(i + 1) == Some('*') {
            while i < b.len() && !(b[i] == '*' && at(i + 1) == Some('/')) {
                out.push(blank(b[i]));
                i += 1;
            }
            out.push_str("  ");
            i += 2;
        } else if let Some(end) = raw_string_end(&b, i) {
            out.push_str("\"\"");
            out.extend(b[i + 2..end].iter().map(|&c| blank(c)));
            i = end;
        } else if b[i] == '"' {
            out.push('"');
            i += 1;
            while b[i] != '"' {
                let step = if b[i] == '\\' { 2 } else { 1 };
                out.extend(b[i..i + step].iter().map(|&c| blank(c)));
                i += step;
            }
            out.push('"');
            i += 1;
        } else if let Some(len) = char_literal_len(&b[i..]) {
            out.extend(std::iter::repeat_n(' ', len));
            i += len;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The index just past a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i`.
fn raw_string_end(b: &[char], i: usize) -> Option<usize> {
    if i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_') {
        return None;
    }
    let mut j = i + usize::from(b[i] == 'b');
    if b.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if b.get(j) != Some(&'"') {
        return None;
    }
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    (j + 1..b.len())
        .find(|&k| b[k..].starts_with(&close))
        .map(|k| k + close.len())
}

/// The length of a char literal (`'x'`, `'\n'`, `'\u{1F600}'`) at the start of `b`; `None` for
/// a lifetime.
fn char_literal_len(b: &[char]) -> Option<usize> {
    if b.first() != Some(&'\'') {
        return None;
    }
    if b.get(1) == Some(&'\\') {
        return b.iter().skip(2).position(|&c| c == '\'').map(|p| p + 3);
    }
    (b.get(2) == Some(&'\'')).then_some(3)
}

/// The index of the bracket closing the one at `open`.
fn matching(b: &[char], open: usize) -> usize {
    let (o, c) = (b[open], if b[open] == '(' { ')' } else { '}' });
    let mut depth = 0;
    for (k, &ch) in b.iter().enumerate().skip(open) {
        if ch == o {
            depth += 1;
        } else if ch == c {
            depth -= 1;
            if depth == 0 {
                return k;
            }
        }
    }
    panic!("unbalanced {o}");
}

struct Function {
    name: String,
    line: usize,
    lines: usize,
    params: usize,
}

/// Every function with a body: its first line, length in lines and parameters (`self` aside).
fn functions(text: &str) -> Vec<Function> {
    let b: Vec<char> = text.chars().collect();
    let line_of = |k: usize| b[..k].iter().filter(|&&c| c == '\n').count() + 1;
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = find_word(&b, i, "fn") {
        i = at + 2;
        let name: String = b[i..]
            .iter()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            continue; // a `fn(..)` pointer type
        }
        let Some(open) = (after_generics(&b, i)..b.len()).find(|&k| b[k] == '(') else {
            break;
        };
        let close = matching(&b, open);
        let Some(body) = (close..b.len()).find(|&k| b[k] == '{' || b[k] == ';') else {
            break;
        };
        if b[body] == ';' {
            continue;
        }
        let end = matching(&b, body);
        out.push(Function {
            name,
            line: line_of(at),
            lines: line_of(end) - line_of(at) + 1,
            params: count_params(&b[open + 1..close]),
        });
    }
    out
}

/// The index after a function's name and generic parameters (`<F: Fn(u8) -> u8>`), which may
/// hold parentheses of their own.
fn after_generics(b: &[char], from: usize) -> usize {
    let mut k = from;
    while k < b.len() && (b[k].is_whitespace() || b[k].is_alphanumeric() || b[k] == '_') {
        k += 1;
    }
    if b.get(k) != Some(&'<') {
        return k;
    }
    let mut depth = 0;
    while k < b.len() {
        match b[k] {
            '<' => depth += 1,
            '>' if b[k - 1] != '-' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
        k += 1;
    }
    k
}

fn find_word(b: &[char], from: usize, word: &str) -> Option<usize> {
    let w: Vec<char> = word.chars().collect();
    let ident = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    (from..b.len().saturating_sub(w.len())).find(|&k| {
        b[k..].starts_with(&w)
            && !ident(k.checked_sub(1).and_then(|p| b.get(p)))
            && !ident(b.get(k + w.len()))
    })
}

/// Top-level comma-separated parameters, not counting a `self` receiver.
fn count_params(list: &[char]) -> usize {
    let mut depth = 0i32;
    let mut params = vec![String::new()];
    for &c in list {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                params.push(String::new());
                continue;
            }
            _ => {}
        }
        params.last_mut().unwrap().push(c);
    }
    params
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let p = p.trim_start_matches('&').trim_start();
            let p = p.strip_prefix("mut ").unwrap_or(p).trim_start();
            !(p == "self" || p.starts_with("self:") || p.starts_with('\''))
        })
        .count()
}

#[test]
fn functions_are_short_and_take_few_parameters() {
    let mut problems = Vec::new();
    for (_, path, text) in sources() {
        for f in functions(&text) {
            let at = format!("{}:{} fn {}", path.display(), f.line, f.name);
            if f.lines > MAX_FUNCTION_LINES {
                problems.push(format!(
                    "{at}: {} lines (at most {MAX_FUNCTION_LINES})",
                    f.lines
                ));
            }
            if f.params > MAX_PARAMETERS {
                problems.push(format!(
                    "{at}: {} parameters (at most {MAX_PARAMETERS})",
                    f.params
                ));
            }
        }
        if text.contains("too_many_arguments") {
            problems.push(format!("{}: allows too_many_arguments", path.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `module -> modules it names through crate::`, for modules at `depth` path segments.
fn module_graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<&str> = sources.iter().map(|(m, _, _)| m.as_str()).collect();
    let cut = |m: &str| m.split("::").take(depth).collect::<Vec<_>>().join("::");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, _, text) in &sources {
        if module == "lib" || module == "main" {
            continue;
        }
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for path in crate_paths(code) {
            let segments: Vec<&str> = path.split("::").collect();
            let target = (1..=segments.len())
                .rev()
                .map(|k| segments[..k].join("::"))
                .find(|p| modules.contains(p.as_str()));
            if let Some(target) = target {
                let (from, to) = (cut(module), cut(&target));
                if from != to && !from.starts_with(&format!("{to}::")) {
                    graph.entry(from).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// Paths named as `crate::a::b` or inside `crate::{a::b, c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let list = match rest.strip_prefix('{') {
            Some(inner) => &inner[..inner.find('}').unwrap_or(inner.len())],
            None => rest,
        };
        for item in list.split(',') {
            let path: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.trim_end_matches(':').to_owned());
            if !rest.starts_with('{') {
                break;
            }
        }
    }
    out
}

/// A cycle through the graph, if any, as the list of its modules.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycles() {
    for depth in [1, 2, 3] {
        if let Some(cycle) = find_cycle(&module_graph(depth)) {
            panic!("import cycle between modules: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn only_the_command_line_knows_about_flags() {
    for (module, path, text) in sources() {
        if module == "main" || module == "cli" || module.starts_with("cli::") {
            continue;
        }
        for word in ["clap", "crate::cli"] {
            assert!(
                find_word(&text.chars().collect::<Vec<_>>(), 0, word).is_none(),
                "{} names {word}: flags belong in src/cli/",
                path.display()
            );
        }
    }
}

#[test]
fn the_checks_see_what_they_check() {
    let text = blank_comments_and_literals(
        "// fn hidden() {}\nfn a(x: u8, y: Vec<(u8, u8)>, self) { let s = \"}\"; let c = '{'; }\nfn b<'a, F: Fn(u8) -> u8>(&'a self) -> u8 { 1 }\nstruct S { f: fn(u8) -> u8 }\n",
    );
    let f = functions(&text);
    assert_eq!(f.len(), 2, "{text}");
    assert_eq!((f[0].name.as_str(), f[0].line, f[0].params), ("a", 2, 2));
    assert_eq!((f[1].name.as_str(), f[1].lines, f[1].params), ("b", 1, 0));
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert!(find_cycle(&graph).is_some());
    assert_eq!(crate_paths("use crate::{a::b, c};"), ["a::b", "c"]);
    // The real graph is not empty: the cycle check has something to look at.
    assert!(module_graph(1)
        .get("train")
        .is_some_and(|t| t.contains("model")));
}
