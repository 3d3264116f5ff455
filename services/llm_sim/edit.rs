//! Edit generation: read what aider put in the prompt and answer with an edit aider really applies.
//!
//! Aider sends the files of the chat in one user message that starts with "I have *added these
//! files to the chat*", each as `\n<path>\n<fence open>\n<content><fence close>\n` (the fence is
//! one of aider's fences, chosen so that no line of any file starts with it). The task is the last
//! user message. The system prompt tells the format: `*SEARCH/REPLACE block*` for `diff`,
//! `*file listing*` for `whole`, and "one-line Git commit message" for the commit-message call.
//!
//! The default edit is deterministic: "docstring" tasks on Python files get a docstring under every
//! `def` that lacks one; any other task gets one comment line naming the task; an empty file gets
//! new content.

use std::path::Path;

/// One chat message, reduced to its role and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text (parts of multi-part contents joined).
    pub content: String,
}

impl Message {
    /// Builds a message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The edit format aider asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditFormat {
    /// SEARCH/REPLACE blocks.
    Diff,
    /// The whole new file in a fenced block.
    Whole,
}

/// What kind of request this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Aider asks for a one-line commit message.
    CommitMessage,
    /// Aider asks for code edits in this format.
    Edit(EditFormat),
}

impl RequestKind {
    /// Short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestKind::CommitMessage => "commit_message",
            RequestKind::Edit(EditFormat::Diff) => "edit_diff",
            RequestKind::Edit(EditFormat::Whole) => "edit_whole",
        }
    }
}

/// How a reply should be spoiled, if at all (the content-level faults of the script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoil {
    /// A valid edit.
    None,
    /// Text that breaks the edit format.
    Malformed,
    /// A SEARCH section that matches nothing.
    NoMatch,
    /// No content.
    Empty,
}

/// One file as aider showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFile {
    /// Path relative to the repository root, as aider wrote it.
    pub path: String,
    /// The file's content.
    pub content: String,
}

const FILES_MARKER: &str = "I have *added these files to the chat*";
const COMMIT_MARKER: &str = "one-line Git commit message";
/// Aider's fences (`aider.coders.base_coder.all_fences`), in its order of preference.
const FENCES: [(&str, &str); 7] = [
    ("```", "```"),
    ("````", "````"),
    ("<source>", "</source>"),
    ("<code>", "</code>"),
    ("<pre>", "</pre>"),
    ("<codeblock>", "</codeblock>"),
    ("<sourcecode>", "</sourcecode>"),
];

/// Tells a commit-message call from an edit call, and the edit format from the system prompt.
pub fn classify(messages: &[Message]) -> RequestKind {
    let system: String = messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if system.contains(COMMIT_MARKER) {
        RequestKind::CommitMessage
    } else if system.contains("SEARCH/REPLACE") {
        RequestKind::Edit(EditFormat::Diff)
    } else {
        // Aider's default for unknown models is "whole"; its prompt says "*file listing*".
        RequestKind::Edit(EditFormat::Whole)
    }
}

/// The task: the last user message (aider's `--message`).
pub fn task(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.trim().to_string())
        .unwrap_or_default()
}

/// The files aider put in the chat (from the last message carrying the files marker).
pub fn chat_files(messages: &[Message]) -> (Vec<ChatFile>, (&'static str, &'static str)) {
    let Some(msg) = messages
        .iter()
        .rev()
        .find(|m| m.role == "user" && m.content.contains(FILES_MARKER))
    else {
        return (Vec::new(), FENCES[0]);
    };
    let lines: Vec<&str> = msg.content.split_inclusive('\n').collect();
    let bare = |l: &str| l.trim_end_matches(['\n', '\r']).to_string();
    // The fence is the first of aider's fences that appears as a line right after a path line.
    let fence = FENCES
        .iter()
        .copied()
        .find(|(open, _)| {
            lines
                .windows(3)
                .any(|w| bare(w[0]).is_empty() && !bare(w[1]).is_empty() && bare(w[2]) == *open)
        })
        .unwrap_or(FENCES[0]);
    // Walk the files in order. A file starts with a blank line, its path, and a line that is
    // exactly the opening fence. No content line starts with the fence (aider picks the fence so),
    // so the file ends at the first line starting with the closing fence; content without a final
    // newline puts the closing fence at the end of its last line, followed by a blank line or the
    // end of the message.
    let mut files = Vec::new();
    let mut i = 2;
    while i < lines.len() {
        let is_header = bare(lines[i]) == fence.0
            && !bare(lines[i - 1]).is_empty()
            && bare(lines[i - 2]).is_empty();
        if !is_header {
            i += 1;
            continue;
        }
        let path = bare(lines[i - 1]).trim().to_string();
        let start = i + 1;
        let mut j = start;
        let mut content = None;
        while j < lines.len() {
            let line = bare(lines[j]);
            if line.starts_with(fence.1) {
                content = Some(lines[start..j].concat());
                break;
            }
            let next_blank = lines.get(j + 1).is_none_or(|l| bare(l).is_empty());
            if line.ends_with(fence.1) && next_blank {
                let last = &line[..line.len() - fence.1.len()];
                content = Some(format!("{}{last}", lines[start..j].concat()));
                break;
            }
            j += 1;
        }
        let Some(content) = content else {
            break;
        };
        files.push(ChatFile { path, content });
        i = j + 1;
    }
    (files, fence)
}

/// One change to one file: `search` (empty = create) replaced by `replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// Exact existing lines (empty for a new file).
    pub search: String,
    /// What replaces them.
    pub replace: String,
}

/// The default edit of one file for a task: hunks plus the whole new content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    /// The file.
    pub path: String,
    /// Hunks for the diff format (non-overlapping, in file order).
    pub hunks: Vec<Hunk>,
    /// The whole new content for the whole format.
    pub new_content: String,
}

/// Computes the deterministic default edit of `file` for `task`.
pub fn default_edit(task: &str, file: &ChatFile) -> FileEdit {
    let summary = task_summary(task);
    let style = comment_style(&file.path);
    if file.content.trim().is_empty() {
        let new_content = new_file_content(&file.path, &summary, style);
        return FileEdit {
            path: file.path.clone(),
            hunks: vec![Hunk {
                search: String::new(),
                replace: new_content.clone(),
            }],
            new_content,
        };
    }
    let is_python = file.path.ends_with(".py");
    if is_python && task.to_ascii_lowercase().contains("docstring") {
        let edit = add_docstrings(file);
        if !edit.hunks.is_empty() {
            return edit;
        }
    }
    add_comment_line(file, &summary, style)
}

/// The first line of the task, trimmed to 60 characters, for comments and commit messages.
pub fn task_summary(task: &str) -> String {
    let first = task
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("the task");
    let mut s: String = first.chars().take(60).collect();
    if first.chars().count() > 60 {
        s.push_str("...");
    }
    s
}

/// Line comment opener and closer for a file by its extension.
fn comment_style(path: &str) -> (&'static str, &'static str) {
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "rs" | "js" | "ts" | "tsx" | "jsx" | "go" | "c" | "h" | "cc" | "cpp" | "hpp" | "java"
        | "kt" | "swift" | "scala" | "cs" | "proto" | "dart" | "php" => ("// ", ""),
        "md" | "html" | "htm" | "xml" | "svg" | "vue" => ("<!-- ", " -->"),
        "sql" | "lua" | "hs" => ("-- ", ""),
        "css" => ("/* ", " */"),
        "json" => ("", ""),
        _ => ("# ", ""),
    }
}

fn new_file_content(path: &str, summary: &str, (open, close): (&str, &str)) -> String {
    if path.ends_with(".py") {
        format!(
            "\"\"\"Created by llm-sim for: {summary}\"\"\"\n\n\ndef main():\n    \"\"\"Entry point.\"\"\"\n    return 0\n"
        )
    } else if path.ends_with(".json") {
        format!(
            "{{\"created_by\": \"llm-sim\", \"task\": {}}}\n",
            json_string(summary)
        )
    } else {
        format!("{open}Created by llm-sim for: {summary}{close}\n")
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Inserts one comment line naming the task before the first non-blank line (after a shebang).
fn add_comment_line(file: &ChatFile, summary: &str, (open, close): (&str, &str)) -> FileEdit {
    let lines: Vec<&str> = file.content.split_inclusive('\n').collect();
    let comment = if open.is_empty() {
        // No comment syntax (JSON): append a harmless trailing newline-separated note is invalid,
        // so fall back to a whitespace-only change that still is a real change.
        String::from("\n")
    } else {
        format!("{open}llm-sim: {summary}{close}\n")
    };
    let mut at = lines.iter().position(|l| !l.trim().is_empty()).unwrap_or(0);
    if lines.get(at).is_some_and(|l| l.starts_with("#!")) && at + 1 < lines.len() {
        at += 1;
        // Keep the SEARCH line non-blank.
        while at + 1 < lines.len() && lines[at].trim().is_empty() {
            at += 1;
        }
    }
    let anchor = lines.get(at).copied().unwrap_or("");
    let anchor_nl = if anchor.ends_with('\n') {
        anchor.to_string()
    } else {
        format!("{anchor}\n")
    };
    let mut new_content: String = lines[..at].concat();
    new_content.push_str(&comment);
    new_content.push_str(&lines[at..].concat());
    FileEdit {
        path: file.path.clone(),
        hunks: vec![Hunk {
            search: anchor_nl.clone(),
            replace: format!("{comment}{anchor_nl}"),
        }],
        new_content,
    }
}

/// Adds `"""<name>."""` under each Python `def` whose body does not start with a docstring.
fn add_docstrings(file: &ChatFile) -> FileEdit {
    let lines: Vec<&str> = file.content.split_inclusive('\n').collect();
    let mut out = String::new();
    let mut hunks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let stripped = line.trim_start();
        if !(stripped.starts_with("def ") || stripped.starts_with("async def ")) {
            out.push_str(line);
            i += 1;
            continue;
        }
        // The header may span lines: it ends at the first line (from here) ending with ':' once
        // brackets balance.
        let indent = &line[..line.len() - stripped.len()];
        let mut depth: i32 = 0;
        let mut end = i;
        loop {
            for c in lines[end].chars() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
            }
            let t = lines[end].trim_end();
            if depth <= 0 && (t.ends_with(':') || end + 1 >= lines.len()) {
                break;
            }
            end += 1;
        }
        let header: String = lines[i..=end].concat();
        let header_line = header.trim_end();
        let next = lines.get(end + 1).map(|l| l.trim_start()).unwrap_or("");
        let one_liner = !header_line.ends_with(':');
        let documented =
            next.starts_with("\"\"\"") || next.starts_with("'''") || next.starts_with("r\"\"\"");
        if one_liner || documented {
            out.push_str(&header);
            i = end + 1;
            continue;
        }
        let name = stripped
            .trim_start_matches("async ")
            .trim_start_matches("def ")
            .split(['(', ' ', ':'])
            .next()
            .unwrap_or("function");
        let header_nl = if header.ends_with('\n') {
            header.clone()
        } else {
            format!("{header}\n")
        };
        let doc = format!("{indent}    \"\"\"{}.\"\"\"\n", describe(name));
        // SEARCH = header plus the first body line, so that identical headers stay distinct.
        let body_first = lines.get(end + 1).copied().unwrap_or("");
        let search = format!("{header_nl}{body_first}");
        let replace = format!("{header_nl}{doc}{body_first}");
        hunks.push(Hunk { search, replace });
        out.push_str(&header_nl);
        out.push_str(&doc);
        i = end + 1;
    }
    FileEdit {
        path: file.path.clone(),
        hunks,
        new_content: out,
    }
}

/// `compute_total` → "Compute total".
fn describe(name: &str) -> String {
    let words = name.trim_matches('_').replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => "Function".to_string(),
    }
}

/// Builds the full reply text for an edit request.
pub fn edit_reply(messages: &[Message], format: EditFormat, spoil: Spoil) -> String {
    if spoil == Spoil::Empty {
        return String::new();
    }
    let task = task(messages);
    let (files, fence) = chat_files(messages);
    let summary = task_summary(&task);
    if files.is_empty() {
        return format!("There are no files in the chat to change for \"{summary}\".\n");
    }
    let mut reply = format!("I will apply \"{summary}\" to {} file(s).\n\n", files.len());
    for file in &files {
        let edit = default_edit(&task, file);
        match (format, spoil) {
            (_, Spoil::Malformed) => {
                // A SEARCH marker with no divider and no REPLACE: aider's diff parser rejects it,
                // and a fence before any filename breaks the whole-file parser.
                reply.push_str(&format!(
                    "{}\n<<<<<<< SEARCH\nthis reply does not follow the edit format\n{}\n",
                    fence.0, fence.1
                ));
            }
            (EditFormat::Diff, Spoil::NoMatch) => {
                reply.push_str(&render_diff(
                    &file.path,
                    fence,
                    &[Hunk {
                        search: "this line does not exist in the file (llm-sim no_match)\n"
                            .to_string(),
                        replace: "replacement\n".to_string(),
                    }],
                ));
            }
            (EditFormat::Diff, _) => reply.push_str(&render_diff(&file.path, fence, &edit.hunks)),
            (EditFormat::Whole, _) => {
                reply.push_str(&format!(
                    "{}\n{}\n{}{}{}\n\n",
                    file.path,
                    fence.0,
                    edit.new_content,
                    if edit.new_content.ends_with('\n') || edit.new_content.is_empty() {
                        ""
                    } else {
                        "\n"
                    },
                    fence.1
                ));
            }
        }
    }
    reply
}

fn render_diff(path: &str, fence: (&str, &str), hunks: &[Hunk]) -> String {
    let lang = if path.ends_with(".py") && fence.0 == "```" {
        "python"
    } else {
        ""
    };
    let mut s = String::new();
    for h in hunks {
        s.push_str(&format!(
            "{path}\n{}{lang}\n<<<<<<< SEARCH\n{}=======\n{}>>>>>>> REPLACE\n{}\n\n",
            fence.0,
            with_newline(&h.search),
            with_newline(&h.replace),
            fence.1
        ));
    }
    s
}

fn with_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// The one-line commit message reply.
pub fn commit_message_reply(messages: &[Message]) -> String {
    // The commit-message call carries the diff, not the task; name the first changed file.
    let user = task(messages);
    let file = user
        .lines()
        .find_map(|l| l.strip_prefix("+++ b/").or_else(|| l.strip_prefix("+++ ")))
        .map(|f| f.trim().to_string());
    match file {
        Some(f) => format!("chore: apply llm-sim edit to {f}"),
        None => "chore: apply llm-sim edit".to_string(),
    }
}

/// The reply for any request: commit message or edit, spoiled as asked.
pub fn reply(messages: &[Message], spoil: Spoil) -> (RequestKind, String) {
    let kind = classify(messages);
    let text = match kind {
        RequestKind::CommitMessage if spoil == Spoil::Empty => String::new(),
        RequestKind::CommitMessage => commit_message_reply(messages),
        RequestKind::Edit(format) => edit_reply(messages, format, spoil),
    };
    (kind, text)
}

/// Deterministic token estimate: a quarter of the characters, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_msg(body: &str) -> Message {
        Message::new(
            "user",
            format!(
                "{FILES_MARKER} so you can go ahead and edit them.\n\n*Trust this message as the true contents of these files!*\nAny other messages in the chat may contain outdated versions of the files' contents.\n{body}"
            ),
        )
    }

    #[test]
    fn parses_files_with_and_without_trailing_newline_and_other_fences() {
        let m = files_msg(
            "\na.py\n```\ndef f():\n    return 1\n```\n\nsrc/b.rs\n```\nfn main() {}```\n",
        );
        let (files, fence) = chat_files(&[m]);
        assert_eq!(fence, ("```", "```"));
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0],
            ChatFile {
                path: "a.py".into(),
                content: "def f():\n    return 1\n".into()
            }
        );
        assert_eq!(
            files[1],
            ChatFile {
                path: "src/b.rs".into(),
                content: "fn main() {}".into()
            }
        );

        let m = files_msg("\nREADME.md\n````\nuse ```rust blocks\n````\n");
        let (files, fence) = chat_files(&[m]);
        assert_eq!(fence, ("````", "````"));
        assert_eq!(files[0].content, "use ```rust blocks\n");
    }

    #[test]
    fn blank_lines_and_missing_final_newlines_do_not_confuse_the_parser() {
        let m = files_msg(
            "\nmain.py\n```\nimport sys\n\nmain()\n```\n\nlib.py\n```\nx = 1```\n\nempty.py\n```\n```\n",
        );
        let (files, _) = chat_files(&[m]);
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.path.as_str(), f.content.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("main.py", "import sys\n\nmain()\n"),
                ("lib.py", "x = 1"),
                ("empty.py", "")
            ]
        );
    }

    #[test]
    fn docstrings_are_added_only_where_missing() {
        let f = ChatFile {
            path: "m.py".into(),
            content: "def a(x):\n    return x\n\n\ndef b():\n    \"\"\"Has one.\"\"\"\n    pass\n\nclass C:\n    def long_name(\n        self, y\n    ):\n        return y\n".into(),
        };
        let e = default_edit("Add docstrings to all functions", &f);
        assert_eq!(e.hunks.len(), 2);
        assert!(
            e.new_content
                .contains("def a(x):\n    \"\"\"A.\"\"\"\n    return x")
        );
        assert!(
            e.new_content
                .contains("    ):\n        \"\"\"Long name.\"\"\"\n        return y")
        );
        assert_eq!(e.new_content.matches("\"\"\"").count(), 6);
        for h in &e.hunks {
            assert!(
                f.content.contains(&h.search),
                "SEARCH must match: {:?}",
                h.search
            );
        }
    }

    #[test]
    fn other_tasks_get_a_comment_and_empty_files_get_content() {
        let f = ChatFile {
            path: "x.rs".into(),
            content: "fn main() {}\n".into(),
        };
        let e = default_edit("Rename things\nplease", &f);
        assert_eq!(e.new_content, "// llm-sim: Rename things\nfn main() {}\n");
        let f = ChatFile {
            path: "run.sh".into(),
            content: "#!/bin/sh\necho hi\n".into(),
        };
        assert_eq!(
            default_edit("t", &f).new_content,
            "#!/bin/sh\n# llm-sim: t\necho hi\n"
        );
        let f = ChatFile {
            path: "new.py".into(),
            content: String::new(),
        };
        let e = default_edit("make it", &f);
        assert!(e.new_content.contains("def main()"));
        assert_eq!(e.hunks[0].search, "");
    }

    #[test]
    fn classifies_by_system_prompt() {
        let sys = |t: &str| vec![Message::new("system", t), Message::new("user", "go")];
        assert_eq!(
            classify(&sys("one-line Git commit messages")),
            RequestKind::CommitMessage
        );
        assert_eq!(
            classify(&sys("a *SEARCH/REPLACE block*")),
            RequestKind::Edit(EditFormat::Diff)
        );
        assert_eq!(
            classify(&sys("a *file listing*")),
            RequestKind::Edit(EditFormat::Whole)
        );
    }

    #[test]
    fn spoiled_replies() {
        let msgs = vec![
            Message::new("system", "use *SEARCH/REPLACE block*"),
            files_msg("\na.py\n```\nx = 1\n```\n"),
            Message::new("assistant", "Ok"),
            Message::new("user", "Add a comment"),
        ];
        let good = edit_reply(&msgs, EditFormat::Diff, Spoil::None);
        assert!(good.contains(
            "<<<<<<< SEARCH\nx = 1\n=======\n# llm-sim: Add a comment\nx = 1\n>>>>>>> REPLACE"
        ));
        let bad = edit_reply(&msgs, EditFormat::Diff, Spoil::Malformed);
        assert!(bad.contains("<<<<<<< SEARCH") && !bad.contains("======="));
        assert!(edit_reply(&msgs, EditFormat::Diff, Spoil::NoMatch).contains("does not exist"));
        assert_eq!(edit_reply(&msgs, EditFormat::Diff, Spoil::Empty), "");
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
