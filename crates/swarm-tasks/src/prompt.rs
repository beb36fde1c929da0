//! Prompt formats per skill (defined once, used by evaluation and by the server's router) and
//! the parsing of agent messages into actions.

use crate::episode::{ChatMessage, Skill};

/// The system message of single-turn coding tasks.
pub const CODING_SYSTEM: &str = "You are an expert Python programmer. Answer with one complete \
Python 3 program in a ```python code block: the requested function with any imports it needs. \
Do not include tests or example usage.";

/// The system message of single-turn database tasks.
pub const DATABASE_SYSTEM: &str = "You are an expert in SQL. Given a SQLite database schema and \
a request, answer with one SQL statement for SQLite in a ```sql code block.";

/// The system message of single-turn shell tasks.
pub const OS_SYSTEM: &str = "You are an expert Linux shell user. Answer with one bash command \
(or a short script) in a ```bash code block. It runs in the given working directory; its \
output is the answer.";

/// The system message of multi-turn (AgentBench-style) shell tasks.
pub const OS_AGENT_SYSTEM: &str = "You are an assistant that solves tasks on a Linux machine by \
running bash commands. In each turn, think, then take exactly one action:\n\
1. To run a command: write \"Act: bash\" followed by the command in a ```bash code block. You \
will see its output.\n\
2. When you know the answer: write \"Act: answer(ANSWER)\", with only the answer inside.\n\
3. When the task needs no answer and you are done: write \"Act: finish\".\n\
Commands run non-interactively; each one starts in the home directory.";

/// The system message of multi-turn (InterCode-style) database tasks.
pub const DATABASE_AGENT_SYSTEM: &str = "You are an assistant that answers requests about a \
SQLite database by querying it. In each turn, think, then take exactly one action:\n\
1. To run a query and see its rows: write \"Act: sql\" followed by the query in a ```sql \
code block.\n\
2. When you have the final query: write \"Act: submit\" followed by it in a ```sql code block.";

/// A multi-turn database prompt.
pub fn database_agent_prompt(schema_sql: &str, question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(DATABASE_AGENT_SYSTEM),
        ChatMessage::user(format!(
            "Database schema:\n{}\n\nRequest: {}",
            schema_sql.trim(),
            question.trim()
        )),
    ]
}

/// The system message for a skill (single-turn form).
pub fn system_prompt(skill: Skill) -> &'static str {
    match skill {
        Skill::Coding => CODING_SYSTEM,
        Skill::Database => DATABASE_SYSTEM,
        Skill::Os => OS_SYSTEM,
    }
}

/// A coding prompt: the task text, optionally with tests the program must pass shown.
pub fn coding_prompt(text: &str, shown_tests: &[String]) -> Vec<ChatMessage> {
    let mut user = text.trim().to_string();
    if !shown_tests.is_empty() {
        user.push_str("\nYour code should pass these tests:\n");
        for t in shown_tests {
            user.push_str(t.trim());
            user.push('\n');
        }
    }
    vec![ChatMessage::system(CODING_SYSTEM), ChatMessage::user(user)]
}

/// A database prompt: the schema (as `CREATE TABLE` statements) and the question.
pub fn database_prompt(schema_sql: &str, question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(DATABASE_SYSTEM),
        ChatMessage::user(format!(
            "Database schema:\n{}\n\nRequest: {}",
            schema_sql.trim(),
            question.trim()
        )),
    ]
}

/// A single-turn shell prompt.
pub fn os_prompt(workdir: &str, task: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(OS_SYSTEM),
        ChatMessage::user(format!(
            "Working directory: {workdir}\nTask: {}",
            task.trim()
        )),
    ]
}

/// A multi-turn shell prompt.
pub fn os_agent_prompt(task: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(OS_AGENT_SYSTEM),
        ChatMessage::user(format!("Task: {}", task.trim())),
    ]
}

/// A prompt's text without the labels this module's formats add ("Working directory: ..."
/// line, "Task: ", "Database schema:", "Request: ", "Your code should pass these tests:"):
/// the task as a client that does not use these formats would ask it. The server's router
/// trains on and is measured on this reading too, so that it does not learn the labels in
/// place of the task.
pub fn without_format_labels(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.starts_with("Working directory: ")
                && *l != "Database schema:"
                && *l != "Your code should pass these tests:"
        })
        .map(|l| {
            l.strip_prefix("Task: ")
                .or_else(|| l.strip_prefix("Request: "))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code of answers written as this module's formats ask: without the fence lines and the
/// `Act: ...` lines of agent actions (what a client pasting a query, a command or a function
/// would send). The server's router trains on this reading of the training split's gold
/// answers, so that a request made of code is routed by its language.
pub fn answer_code(answers: &[String]) -> String {
    answers
        .iter()
        .flat_map(|a| a.lines())
        .filter(|l| !l.starts_with("```") && !l.starts_with("Act: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wraps code in a fenced block (how gold answers are written).
pub fn fenced(lang: &str, code: &str) -> String {
    format!("```{lang}\n{}\n```", code.trim_end())
}

/// The first fenced code block tagged with one of `langs` (or untagged); without any fence,
/// the whole message trimmed.
pub fn extract_code(message: &str, langs: &[&str]) -> String {
    let mut rest = message;
    let mut untagged: Option<String> = None;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (tag, body_start) = match after.find('\n') {
            Some(nl) => (after[..nl].trim(), nl + 1),
            None => break,
        };
        let body = &after[body_start..];
        let (code, next) = match body.find("```") {
            Some(end) => (&body[..end], &body[end + 3..]),
            None => (body, ""),
        };
        let tag_l = tag.to_ascii_lowercase();
        if langs.iter().any(|l| *l == tag_l) {
            return code.trim_end().to_string();
        }
        if tag.is_empty() && untagged.is_none() {
            untagged = Some(code.trim_end().to_string());
        }
        rest = next;
    }
    untagged.unwrap_or_else(|| message.trim().to_string())
}

/// An action of a multi-turn shell episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Run this command and show the output.
    Run(String),
    /// The final answer.
    Answer(String),
    /// Done, nothing to answer.
    Finish,
    /// The message could not be understood.
    Invalid(String),
}

/// Parses an AgentBench-style message (`Act: bash` + code, `Act: answer(...)`, `Act: finish`).
pub fn parse_agent_action(message: &str) -> AgentAction {
    let Some(pos) = message.rfind("Act:") else {
        return AgentAction::Invalid("no \"Act:\" line".into());
    };
    let act = message[pos + 4..].trim_start();
    let lower = act.to_ascii_lowercase();
    if lower.starts_with("finish") {
        AgentAction::Finish
    } else if lower.starts_with("answer(") {
        let inner = &act["answer(".len()..];
        let end = inner.rfind(')').unwrap_or(inner.len());
        AgentAction::Answer(inner[..end].trim().to_string())
    } else if lower.starts_with("bash") {
        let code = extract_code(&act[4..], &["bash", "sh", "shell"]);
        if code.is_empty() {
            AgentAction::Invalid("empty command".into())
        } else {
            AgentAction::Run(code)
        }
    } else {
        AgentAction::Invalid(format!(
            "unknown action {:?}",
            act.lines().next().unwrap_or("")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_tagged_block_first() {
        let m = "Here:\n```\nplain\n```\n```python\ndef f():\n    return 1\n```\n";
        assert_eq!(extract_code(m, &["python", "py"]), "def f():\n    return 1");
        assert_eq!(extract_code("```\nls -l\n```", &["bash"]), "ls -l");
        assert_eq!(extract_code("  SELECT 1 ", &["sql"]), "SELECT 1");
        // An unterminated fence still yields its body.
        assert_eq!(extract_code("```sql\nSELECT 2", &["sql"]), "SELECT 2");
    }

    #[test]
    fn format_labels_come_off() {
        let user = |m: Vec<ChatMessage>| without_format_labels(&m[1].content);
        assert_eq!(
            user(os_prompt("/work", "count the files")),
            "count the files"
        );
        assert_eq!(
            user(os_agent_prompt("is npm installed?")),
            "is npm installed?"
        );
        assert_eq!(
            user(database_prompt("CREATE TABLE t (x INT);", "how many rows?")),
            "CREATE TABLE t (x INT);\n\nhow many rows?"
        );
        assert_eq!(
            user(coding_prompt("Write f.", &["assert f() == 1".into()])),
            "Write f.\nassert f() == 1"
        );
    }

    #[test]
    fn answer_code_drops_fences_and_actions() {
        let answers = vec![
            format!("Act: bash\n{}", fenced("bash", "ls /tmp | wc -l")),
            "Act: answer(3)".to_string(),
        ];
        assert_eq!(answer_code(&answers), "ls /tmp | wc -l");
        assert_eq!(answer_code(&[fenced("sql", "SELECT 1;")]), "SELECT 1;");
    }

    #[test]
    fn parses_agent_actions() {
        assert_eq!(
            parse_agent_action("Think: look.\nAct: bash\n```bash\nls /\n```"),
            AgentAction::Run("ls /".into())
        );
        assert_eq!(
            parse_agent_action("Act: answer(42)"),
            AgentAction::Answer("42".into())
        );
        assert_eq!(parse_agent_action("Act: finish"), AgentAction::Finish);
        assert!(matches!(
            parse_agent_action("hello"),
            AgentAction::Invalid(_)
        ));
    }
}
